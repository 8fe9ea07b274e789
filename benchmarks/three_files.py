"""Purchase logs in the shape of three files: ``train.csv``, ``target.csv`` (ground truth for
validation) and ``test.csv``, each ``customer_id,product_id,timestamp``; per customer, the latest 10%
of their purchases go to test and the 10% before them to target. No real dataset here ships that
shape, so the built-in synthetic generator (planted tastes, power-law popularity) fills it.

    python -m benchmarks.three_files --output data/purchases-raw
    python -m distgnn.prepare --input data/purchases-raw/train.csv --val_input data/purchases-raw/target.csv \\
        --test_input data/purchases-raw/test.csv --split given --user_col customer_id --item_col product_id \\
        --time_col timestamp --output data/purchases
    python -m distgnn.train --config configs/purchases-top3.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from distgnn.core.config import SyntheticConfig
from distgnn.data.readers import TEST, TRAIN, VAL
from distgnn.data.split import split_interactions
from distgnn.data.synthetic import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="data/purchases-raw", help="folder for the three CSV files")
    parser.add_argument("--num-users", type=int, default=6000, help="customers (default: 6000)")
    parser.add_argument("--num-items", type=int, default=3000, help="products (default: 3000)")
    parser.add_argument("--seed", type=int, default=0, help="generator and split seed (default: 0)")
    args = parser.parse_args()
    s = generate(SyntheticConfig(num_users=args.num_users, num_items=args.num_items, seed=args.seed))
    labels = split_interactions(
        s.user, s.timestamp, method="temporal", val_fraction=0.1, test_fraction=0.1, seed=args.seed
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, code in (("train", TRAIN), ("target", VAL), ("test", TEST)):
        rows = np.flatnonzero(labels == code)
        table = pa.table(
            {
                "customer_id": pa.array(np.char.add("c", s.user[rows].astype(str))),
                "product_id": pa.array(np.char.add("p", s.item[rows].astype(str))),
                "timestamp": pa.array(s.timestamp[rows]),
            }
        )
        pacsv.write_csv(table, out / f"{name}.csv")
        print(f"{out / name}.csv: {rows.size:,} purchases")


if __name__ == "__main__":
    main()
