"""Run directories and exports on S3, end to end against a real S3-compatible server (moto's
standalone server, started by the test on 127.0.0.1)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distgnn
from distgnn.core.config import PrepareConfig
from distgnn.core.errors import DataError
from distgnn.core.files import MARKER, write_marker
from distgnn.core.storage import download, upload
from distgnn.data.prepare import prepare

from test_train import tiny_train_command

BUCKET = "distgnn-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS variables pyarrow and Ray read point
    at it for the duration of the module (and for the subprocesses the tests start)."""
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait()


def keys(client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    # pyarrow leaves empty "folder/" objects for the folders it creates: not files
    return sorted(o["Key"][len(prefix) :] for o in listed if not o["Key"].endswith("/"))


def test_a_folder_round_trips_and_an_incomplete_one_is_refused(s3, tmp_path):
    folder = tmp_path / "exp"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"\x00\x01" * 1000)
    (folder / "sub" / "b.txt").write_text("b")
    write_marker(folder, "export")
    upload(folder, f"s3://{BUCKET}/round/exp")
    assert keys(s3, "round/exp/") == [MARKER, "a.bin", "sub/b.txt"]
    back = download(f"s3://{BUCKET}/round/exp")
    assert (back / "a.bin").read_bytes() == (folder / "a.bin").read_bytes()
    assert (back / "sub" / "b.txt").read_text() == "b"
    s3.delete_object(Bucket=BUCKET, Key=f"round/exp/{MARKER}")
    with pytest.raises(DataError, match="not a complete distgnn folder"):
        download(f"s3://{BUCKET}/round/exp")


def test_prepare_reads_a_log_under_an_s3_prefix_as_the_same_files_locally(s3, tmp_path):
    """Parquet and CSV parts under s3://bucket/logs/ give the graph the same parts give from a local
    folder (prepare reads URIs through pyarrow's filesystems)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = [(f"u{k % 37}", f"i{(k * 7) % 53}", k) for k in range(600)]
    (logs / "part-0.csv").write_text("user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows[:300]))
    pq.write_table(
        pa.table(
            {"user": [r[0] for r in rows[300:]], "item": [r[1] for r in rows[300:]], "ts": [r[2] for r in rows[300:]]}
        ),
        logs / "part-1.parquet",
    )
    for path in logs.iterdir():
        s3.upload_file(str(path), BUCKET, f"logs/{path.name}")
    options = {"time_col": "ts", "duplicates": "first", "split": "temporal"}
    local = prepare(PrepareConfig(input=str(logs), output=str(tmp_path / "local"), **options))
    remote = prepare(PrepareConfig(input=f"s3://{BUCKET}/logs/", output=str(tmp_path / "remote"), **options))
    for name in ("train.parquet", "val.parquet", "test.parquet", "users.parquet", "items.parquet", "graph/indices.npy"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    assert json.loads((remote / "meta.json").read_text())["source"] == f"csv:s3://{BUCKET}/logs/"
    with pytest.raises(DataError, match=f"s3://{BUCKET}/nothing-here: no such file or folder"):
        prepare(PrepareConfig(input=f"s3://{BUCKET}/nothing-here", output=str(tmp_path / "none")))


@pytest.mark.slow
def test_train_on_ray_with_s3_storage_then_export_and_recommend_from_s3(s3, tiny_graph, tmp_path):
    env = {**os.environ, "RAY_TMPDIR": "/tmp"}
    train = subprocess.run(
        tiny_train_command(
            tiny_graph,
            **{
                "run.storage": f"s3://{BUCKET}/runs",
                "run.output_dir": tmp_path / "local",
                "run.name": "on-s3",
                "optim.epochs": 2,
                "cluster.num_workers": 2,
            },
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    stored = keys(s3, "runs/on-s3/")
    for name in (MARKER, "config.yaml", "metrics.jsonl", "model.pt", "results.json"):
        assert name in stored, (name, stored)
    assert any(k.startswith("ray/checkpoint_") for k in stored)  # Ray Train's checkpoints live there too

    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "distgnn.export",
            "--run",
            f"s3://{BUCKET}/runs/on-s3",
            "--output",
            f"s3://{BUCKET}/exports/on-s3",
            "--indexes",
            "flat",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert {"manifest.json", "users.parquet", "items.parquet", "index-flat.faiss", MARKER} <= set(
        keys(s3, "exports/on-s3/")
    )
    loaded = distgnn.load_export(f"s3://{BUCKET}/exports/on-s3", verify=True)
    users = loaded.user_ids.to_pylist()[:3]
    assert loaded.recommend(users, k=5).num_rows == 15
