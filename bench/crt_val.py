"""Validation-only comparison of the cRT sampler for v5 (how v5's `--crt-sampler sqrt` was chosen).

For one finished v5 run, takes its selection stage's model (select/stage1.pt: trained on the training split),
re-trains the classifier with each sampler (class-balanced, square-root, natural), chooses tau on the
validation split as train.py does, and prints validation accuracy and macro-F1 for each, with the whole
tau curve. The test split is not read.

    python bench/crt_val.py RUNS/imagenet-s0/v5/fold0 [--data DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imgcls import checkpoint  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.decision import adjust, choose_tau  # noqa: E402
from imgcls.decoupling import extract_features, replace_classifier, retrain_classifier  # noqa: E402
from imgcls.inference import predict_dataset  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402
from imgcls.models import create_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fold_dir", help="a v5 run's fold folder (it holds select/)")
    p.add_argument("--data", default=None, help="the run's data (default: its config's)")
    args = p.parse_args()
    sdir = os.path.join(args.fold_dir, "select")
    record = checkpoint.read(os.path.join(sdir, "stage1.pt"))
    split = json.load(open(os.path.join(sdir, "split.json")))
    train, val = np.array(split["folds"][0]["train"]), np.array(split["folds"][0]["val"])
    data = load_dataset(args.data or record.config["data"], cache_dir=record.config["cache_dir"], log=lambda *a: None)
    net = create_model(record.model_name, record.num_classes, pretrained=None)
    net.load_state_dict(record.model)
    pre = record.preprocessing
    kw = dict(img_size=pre.img_size, mean=pre.mean, std=pre.std, device=torch.device("cpu"))
    feats = extract_features(net.eval(), data.images, train, **kw)
    y, counts = data.labels.numpy()[val], record.train_class_counts
    m = classification_metrics(y, predict_dataset(net, data.images, val, **kw).argmax(1), data.class_names)
    print(f"before cRT: val acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}")
    for sampler in ("weighted", "sqrt", "natural"):
        head = retrain_classifier(feats, data.labels[train], record.num_classes, sampler=sampler,
                                  settings=record.config, steps=record.config["crt_steps"],
                                  batch_size=record.config["crt_batch_size"], lr=record.config["crt_lr"],
                                  seed=record.config["seed"])
        replace_classifier(net, head)
        probs = predict_dataset(net, data.images, val, **kw)
        tau, f1_by_tau = choose_tau(probs, y, counts)
        m = classification_metrics(y, adjust(probs, counts, tau).argmax(1), data.class_names)
        acc_by_tau = {t: float((adjust(probs, counts, t).argmax(1) == y).mean()) for t in f1_by_tau}
        print(f"cRT {sampler}: tau {tau:+.1f} val acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}")
        print("  macro-F1 by tau: " + " ".join(f"{t:+.1f}:{v:.3f}" for t, v in f1_by_tau.items()))
        print("  accuracy by tau: " + " ".join(f"{t:+.1f}:{v:.3f}" for t, v in acc_by_tau.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
