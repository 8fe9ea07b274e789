"""The package version, recorded in every output distgnn writes."""

VERSION = "0.1.0"
