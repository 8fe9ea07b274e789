import csv

import pytest

from distgnn.core.config import ConfigError, TrainJobConfig, load_config
from distgnn.training.search import derive_fanouts, parse_search_space, trial_job
from distgnn.tune import main


def test_search_space_is_validated_and_fanouts_follow_the_layers():
    base = load_config(TrainJobConfig, **{"sampler.num_neighbors": "15,10,5", "model.num_layers": 3})
    dims = parse_search_space(
        {
            "optim.lr": {"loguniform": ["1e-3", 0.05]},  # YAML's 1e-3 is a string
            "model.num_layers": {"choice": [2, 4]},
            "model.dim": {"randint": [16, 65]},
        },
        base,
    )
    assert [(d.key, d.kind, d.values) for d in dims] == [
        ("optim.lr", "loguniform", (0.001, 0.05)),
        ("model.num_layers", "choice", (2, 4)),
        ("model.dim", "randint", (16, 65)),
    ]
    assert derive_fanouts((15, 10, 5), 2) == (15, 10)
    assert trial_job(base, {"model.num_layers": 4}).sampler.num_neighbors == (15, 10, 5, 5)
    assert trial_job(base, {"optim.lr": 0.01}).sampler.num_neighbors == (15, 10, 5)

    bad = {
        "optim.lrr": {"choice": [0.1]},  # typo
        "optim": {"choice": [0.1]},  # a section, not a field
        "optim.epochs": {"choice": [3]},  # fixed: --max-epochs
        "optim.lr": {"normal": [0.0, 1.0]},  # unknown distribution
        "optim.l2": {"loguniform": [0.0, 1.0]},  # log of 0
        "model.dim": {"uniform": [16, 64]},  # real numbers for an int field
        "model.name": {"choice": ["gcn"]},  # not a model
        "sampler.num_neighbors": {"choice": [[10, 10]]},
    }  # 2 fanouts for 3 layers
    for key, spec in bad.items():
        with pytest.raises(ConfigError, match=f"'{key}'"):
            parse_search_space({key: spec}, base)
    with pytest.raises(ConfigError, match="not both"):
        parse_search_space({"model.num_layers": {"choice": [2]}, "sampler.num_neighbors": {"choice": [[5, 5]]}}, base)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # address="local": a fresh instance even when another Ray cluster runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_search_writes_a_results_table_and_a_loadable_best_config(tiny_graph, tmp_path, ray_local, capsys):
    search = tmp_path / "search.yaml"
    search.write_text("optim.lr: {loguniform: [0.005, 0.05]}\nmodel.num_layers: {choice: [1, 2]}\n")
    code = main(
        [
            "--graph",
            str(tiny_graph),
            "--search",
            str(search),
            "--samples",
            "2",
            "--max-epochs",
            "2",
            "--grace-period",
            "1",
            "--output-dir",
            str(tmp_path),
            "--name",
            "t",
            "--cpus-per-trial",
            "1",
            "--model.dim",
            "16",
            "--sampler.num_neighbors",
            "5,5",
            "--optim.batch_size",
            "1024",
            "--optim.epochs",
            "7",
            "--eval.patience",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    with (tmp_path / "t" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all(r["status"] != "" and not r["status"].startswith("error") for r in rows)
    assert all(r["sampler.num_neighbors"] in ("5", "5,5") for r in rows)  # derived from 5,5
    best = load_config(TrainJobConfig, tmp_path / "t" / "best.yaml")
    top = rows[0]
    assert best.optim.lr == pytest.approx(float(top["optim.lr"]), rel=1e-5)
    assert best.model.num_layers == int(top["model.num_layers"]) == len(best.sampler.num_neighbors)
    assert best.optim.epochs == 7  # the base config's epochs, not --max-epochs
    assert float(top["val/ndcg@20"]) >= float(rows[1]["val/ndcg@20"])
    assert all(int(r["epochs"]) <= 2 for r in rows)
    assert f"python -m distgnn.train --config {tmp_path / 't' / 'best.yaml'}" in out
