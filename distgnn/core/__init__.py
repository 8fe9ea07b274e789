"""Shared by every stage: errors, configs, distributed helpers, durable files, tensor files,
run directories, starting Ray, command-line conventions. Imports nothing else of distgnn."""
