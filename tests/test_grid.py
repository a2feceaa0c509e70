"""The grid summary selects on validation metrics only."""

from __future__ import annotations

import torch

from earlyad.train.grid import summarise_grid


def _ckpt(path, auc, loss, test_auc):
    torch.save(
        {
            "config": {"norm_type": "instance", "batch_size": 8, "lr": 0.001, "width": 0.125},
            "epoch": 3,
            "val_metrics": {"val_macro_auc": auc, "val_loss": loss},
            "test_metrics_never_used": test_auc,
        },
        path,
    )
    return path


def test_selection_uses_validation_auc_or_loss(tmp_path):
    models = {
        "a": _ckpt(tmp_path / "a.pt", auc=0.70, loss=0.9, test_auc=0.99),
        "b": _ckpt(tmp_path / "b.pt", auc=0.80, loss=1.1, test_auc=0.50),
    }
    by_auc = summarise_grid(models, "auc")
    assert by_auc.set_index("run")["selected"].to_dict() == {"a": False, "b": True}
    by_loss = summarise_grid(models, "loss")
    assert by_loss.set_index("run")["selected"].to_dict() == {"a": True, "b": False}
    assert by_auc.loc[0, "lr"] == 0.001 and by_auc.loc[0, "selected_epoch"] == 3
