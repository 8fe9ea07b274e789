"""Trust: nothing runs from a file, nothing is destroyed by a path, a damaged file never gives
silent garbage, and every such case ends in one line naming the file."""

import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import distgnn
from distgnn.core.checkpoint import (
    BEST_MODEL,
    load_checked,
    load_model_into,
    load_model_state,
    payload_digest,
    save_checked,
    save_model_shard,
    save_sharded_model,
)
from distgnn.core.errors import DataError
from distgnn.core.files import MARKER, atomic_folder, check_plain_name, folder_kind
from distgnn.core.rundir import create_run_dir
from distgnn.export import main as export_main
from distgnn.nn.models import LightGCN
from distgnn.recommend import main as recommend_main
from distgnn.serving.export import export, read_manifest
from distgnn.training.launcher import train_in_process as train_loop

from test_train import tiny_job


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with its sha256: 'byte-identical' made checkable."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_and_export(tiny_graph, tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    job = tiny_job(tiny_graph, **{"optim.epochs": 1})
    run_dir = create_run_dir(job, str(root / "runs"), "run")
    train_loop(job, run_dir)
    out = export(run_dir, root / "exports" / "exp", indexes=("flat",))
    return run_dir, out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- 1. Safe loading ----------------------------------------------------------------------------


class Payload:
    """Pickled, it calls ``os.system`` on load: what a hostile model.pt would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_in_model_pt_is_refused_and_never_runs(run_and_export, tmp_path, capsys):
    run_dir, _ = run_and_export
    hostile = tmp_path / "hostile-run"
    shutil.copytree(run_dir, hostile)
    marker = tmp_path / "payload-ran"
    state = load_model_state(run_dir / BEST_MODEL)
    torch.save({"model": state["model"], "info": state["info"], "extra": Payload(marker)}, hostile / BEST_MODEL)
    with pytest.raises(pickle.UnpicklingError):  # the file really is hostile to an unsafe loader
        torch.load(hostile / BEST_MODEL, weights_only=True)
    assert export_main(["--run", str(hostile), "--output", str(tmp_path / "exp")]) == 2
    line = one_error_line(capsys)
    assert "model.pt" in line and "refused" in line
    assert not marker.exists() and not (tmp_path / "exp").exists()


def test_checked_files_refuse_damage_and_truncation(tmp_path):
    path = tmp_path / "state.pt"
    save_checked({"model": {"w": torch.arange(1000, dtype=torch.float32)}, "epoch": 3}, path)
    assert load_checked(path, "checkpoint")["epoch"] == 3
    data = bytearray(path.read_bytes())
    start = data.find(np.arange(1000, dtype=np.float32).tobytes()[:64])
    assert start > 0
    data[start + 40] ^= 0xFF  # one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum does not match"):
        load_checked(path, "checkpoint")
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DataError, match="truncated or damaged"):
        load_checked(path, "checkpoint")


def test_truncated_model_pt_is_one_line(run_and_export, tmp_path, capsys):
    run_dir, _ = run_and_export
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / BEST_MODEL).write_bytes((run_dir / BEST_MODEL).read_bytes()[:1000])
    assert export_main(["--run", str(broken), "--output", str(tmp_path / "exp")]) == 2
    assert "model.pt" in one_error_line(capsys)


# --- 2. Outputs replace only their own kind -----------------------------------------------------


def test_export_output_at_a_foreign_folder_is_refused_byte_identical(run_and_export, tmp_path, capsys):
    run_dir, _ = run_and_export
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = tree_digest(foreign)
    assert export_main(["--run", str(run_dir), "--output", str(foreign), "--indexes", "flat"]) == 2
    line = one_error_line(capsys)
    assert str(foreign) in line and "--overwrite" in line
    assert tree_digest(foreign) == before


def test_export_output_at_a_run_folder_is_refused_even_with_overwrite(run_and_export, capsys):
    run_dir, _ = run_and_export
    before = tree_digest(run_dir)
    for extra in ([], ["--overwrite"]):
        assert export_main(["--run", str(run_dir), "--output", str(run_dir), "--indexes", "flat", *extra]) == 2
        assert "holds a distgnn run" in one_error_line(capsys)
        assert tree_digest(run_dir) == before


def test_overwrite_replaces_a_foreign_folder_and_an_export_replaces_an_export(run_and_export, tmp_path):
    run_dir, _ = run_and_export
    foreign = tmp_path / "old"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert export_main(["--run", str(run_dir), "--output", str(foreign), "--indexes", "flat", "--overwrite"]) == 0
    assert folder_kind(foreign) == "export" and not (foreign / "notes.txt").exists()
    assert export_main(["--run", str(run_dir), "--output", str(foreign), "--indexes", "flat"]) == 0


def test_prepare_output_at_a_foreign_folder_is_refused(tmp_path):
    from distgnn.core.config import PrepareConfig, SyntheticConfig
    from distgnn.data.prepare import prepare

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "ratings.csv").write_text("user,item\n1,2\n")
    before = tree_digest(foreign)
    with pytest.raises(DataError, match="not written by distgnn"):
        prepare(PrepareConfig(output=str(foreign), synthetic=SyntheticConfig(num_users=50, num_items=40)))
    assert tree_digest(foreign) == before


def test_the_current_folder_and_its_parents_are_never_replaced(tmp_path, monkeypatch):
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (inner / "file").write_text("x")
    monkeypatch.chdir(inner)
    for target in (Path("."), tmp_path / "a"):
        with pytest.raises(DataError, match="current folder"), atomic_folder(target, kind="export", overwrite=True):
            pass
    assert (inner / "file").read_text() == "x"


def test_a_failed_final_rename_leaves_no_temporary_folder_and_the_old_version(tmp_path, monkeypatch):
    final = tmp_path / "exp"
    with atomic_folder(final, kind="export") as tmp:
        (tmp / "v").write_text("1")
    real_rename = Path.rename

    def failing_rename(self, target):
        if ".tmp-" in self.name:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError), atomic_folder(final, kind="export") as tmp:
        (tmp / "v").write_text("2")
    monkeypatch.undo()
    assert (final / "v").read_text() == "1" and (final / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_an_error_inside_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "out", kind="graph") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../../x", "/etc/x", "a/b", ".hidden", "", "-rf", "x" * 200])
def test_run_names_must_be_plain(name):
    with pytest.raises(DataError, match="run.name"):
        check_plain_name(name or "", "config key 'run.name'")


def test_a_run_name_escaping_the_runs_folder_is_refused(tiny_graph, tmp_path):
    job = tiny_job(tiny_graph)
    with pytest.raises(DataError, match="plain name"):
        create_run_dir(job, str(tmp_path / "runs"), "../../escaped")
    assert not (tmp_path / "escaped").exists()


# --- 3. Verification ----------------------------------------------------------------------------


def damaged_copy(exported: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "exp"
    shutil.copytree(exported, copy)
    return copy


def test_a_flipped_index_is_caught_by_verify_and_recommend_says_so(run_and_export, tmp_path, capsys):
    _, exported = run_and_export
    copy = damaged_copy(exported, tmp_path)
    index = copy / "index-flat.faiss"
    data = bytearray(index.read_bytes())
    data[-4096:] = bytes(b ^ 0xFF for b in data[-4096:])
    index.write_bytes(bytes(data))
    user = distgnn.load_export(exported).user_ids[0].as_py()
    assert recommend_main(["--export", str(copy), "--user-ids", user, "--verify"]) == 2
    assert "index-flat.faiss" in one_error_line(capsys)


def test_a_truncated_file_is_caught_without_verify(run_and_export, tmp_path, capsys):
    _, exported = run_and_export
    user = distgnn.load_export(exported).user_ids[0].as_py()
    for name in ("items.parquet", "index-flat.faiss"):
        copy = damaged_copy(exported, tmp_path / name)
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(data[: len(data) // 2])
        assert recommend_main(["--export", str(copy), "--user-ids", user]) == 2
        line = one_error_line(capsys)
        assert name in line and "truncated" in line


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_without_checksums_or_indexes_fails(run_and_export, tmp_path):
    _, exported = run_and_export
    for key in ("checksums", "indexes", "sizes"):
        copy = damaged_copy(exported, tmp_path / key)
        edit_manifest(copy, lambda m, key=key: m.pop(key))
        with pytest.raises(DataError, match=f"'{key}' is missing"):
            read_manifest(copy, verify=True)


def test_a_manifest_entry_missing_a_checksum_fails(run_and_export, tmp_path):
    _, exported = run_and_export
    copy = damaged_copy(exported, tmp_path)
    edit_manifest(copy, lambda m: (m["checksums"].pop("users.parquet"), m["sizes"].pop("users.parquet")))
    with pytest.raises(DataError, match="no checksum or size recorded for users.parquet"):
        read_manifest(copy, verify=True)


def test_manifest_file_names_must_stay_inside_the_folder(run_and_export, tmp_path):
    _, exported = run_and_export
    copy = damaged_copy(exported, tmp_path / "inner")
    outside = tmp_path / "x.faiss"
    shutil.copy(copy / "index-flat.faiss", outside)

    def redirect(m):
        m["indexes"]["flat"]["file"] = "../x.faiss"
        m["checksums"]["../x.faiss"] = m["checksums"].pop("index-flat.faiss")
        m["sizes"]["../x.faiss"] = m["sizes"].pop("index-flat.faiss")

    edit_manifest(copy, redirect)
    with pytest.raises(DataError, match="points outside"):
        read_manifest(copy)


def test_export_verifies_the_graph(run_and_export, tmp_path, capsys):
    run_dir, _ = run_and_export
    config = (run_dir / "config.yaml").read_text()
    graph = Path(next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("graph:")))
    copy = tmp_path / "graph"
    shutil.copytree(graph, copy)
    indices = np.load(copy / "graph" / "indices.npy")
    indices[:10] = indices[10:20]
    np.save(copy / "graph" / "indices.npy", indices)
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    (run_copy / "config.yaml").write_text(config.replace(str(graph), str(copy)))
    assert export_main(["--run", str(run_copy), "--output", str(tmp_path / "exp")]) == 2
    line = one_error_line(capsys)
    assert "indices.npy" in line and "checksum" in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--chunk-size", "0"], "--chunk-size"),
        (["--chunk-size", "-5"], "--chunk-size"),
        (["--workers", "0"], "--workers"),
        (["--indexes", ","], "--indexes"),
    ],
)
def test_export_refuses_bad_numbers(run_and_export, tmp_path, capsys, args, expected):
    run_dir, _ = run_and_export
    assert export_main(["--run", str(run_dir), "--output", str(tmp_path / "exp"), *args]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--k", "-5"], "k: expected"),
        (["--k", "0"], "k: expected"),
        (["--k", "10000000"], "k: expected"),
        (["--user-ids", ""], "no user ids"),
        (["--user-ids", " , "], "no user ids"),
        (["--user-ids", "no-such-user"], "unknown user id"),
        (["--index", "hnsw"], "no 'hnsw' index"),
    ],
)
def test_recommend_refuses_bad_requests(run_and_export, capsys, args, expected):
    _, exported = run_and_export
    user = distgnn.load_export(exported).user_ids[0].as_py()
    argv = ["--export", str(exported), "--user-ids", user, *args]
    assert recommend_main(argv) == 2
    assert expected in one_error_line(capsys)


def test_recommend_on_a_missing_or_incomplete_export_is_one_line(tmp_path, capsys):
    assert recommend_main(["--export", str(tmp_path / "nope"), "--user-ids", "1"]) == 2
    assert "no such export folder" in one_error_line(capsys)
    (tmp_path / "half").mkdir()
    assert recommend_main(["--export", str(tmp_path / "half"), "--user-ids", "1"]) == 2
    assert "not a complete export" in one_error_line(capsys)


def test_checked_save_is_a_single_self_contained_file(tmp_path):
    save_checked({"model": {"w": torch.ones(3)}, "info": {"epoch": 1}}, tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    raw = torch.load(io.BytesIO((tmp_path / "m.pt").read_bytes()), weights_only=True)
    assert set(raw) == {"format", "payload", "sha256"}


def test_the_digest_is_the_one_files_were_written_with():
    """The digest of a payload's content, as distgnn has always computed it (this value came from
    the release before the digest stopped copying each tensor): files written before still verify."""
    payload = {
        "model": {
            "w": torch.arange(6.0).view(2, 3),
            "b": torch.tensor([1, 2]),
            "h": torch.ones(3, dtype=torch.bfloat16),
        },
        "epoch": 3,
        "e": torch.zeros(0),
        "l": [1.5, "x", None],
    }
    assert payload_digest(payload) == "802ec84a0c8fcd4518753f092c42e9a1258442387ef3054c2633f5d61462d226"


def sharded_run(folder: Path, epochs=(4, 4, 4)) -> tuple[torch.Tensor, LightGCN]:
    """A 10-node model kept as 2 shards (nodes 0,3,4,7 and 1,2,5,6,8,9) and the model.pt naming them."""
    table = torch.randn(10, 3)
    parts = [torch.tensor([0, 3, 4, 7]), torch.tensor([1, 2, 5, 6, 8, 9])]
    for part, (nodes, epoch) in enumerate(zip(parts, epochs[1:])):
        save_model_shard(folder / "model-parts", part, nodes, {"embedding.weight": table[nodes]}, {"epoch": epoch})
    save_sharded_model(
        folder / BEST_MODEL, {"embedding.weight": table[:4]}, {"epoch": epochs[0]}, folder="model-parts", num_parts=2
    )
    return table, LightGCN(10, 3, num_layers=1)


def test_a_sharded_model_loads_row_by_row_and_refuses_a_stale_or_missing_shard(tmp_path):
    table, model = sharded_run(tmp_path)
    assert "embedding.weight" not in load_model_state(tmp_path / BEST_MODEL)["model"]  # no table in model.pt
    assert load_model_into(tmp_path / BEST_MODEL, model) == {"epoch": 4}
    assert torch.equal(model.embedding.weight.detach(), table)
    sharded_run(tmp_path, epochs=(4, 4, 3))  # part 1 from an older best epoch
    with pytest.raises(DataError, match="part-001.pt: a shard of epoch 3, but model.pt is of epoch 4"):
        load_model_into(tmp_path / BEST_MODEL, model)
    sharded_run(tmp_path)
    (tmp_path / "model-parts" / "part-000.pt").unlink()
    with pytest.raises(DataError, match="part-000.pt: no such file"):
        load_model_into(tmp_path / BEST_MODEL, model)
