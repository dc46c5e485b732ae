"""The worker loop under Ray Train with 2 gloo CPU workers: each rank trains on its shard, so the
steps per epoch and the schedule's length are the shard's, and the poly schedule ends at 0."""

import json
from pathlib import Path

import pytest

from orchestrator.spec.train import TrainSpec


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_step_through_their_shard_and_finish_the_schedule(ray_cluster, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    def record_ranks(config: dict) -> None:  # local, so Ray pickles it by value (tests/ is no package)
        """The real train_loop; each rank writes its final metrics and world size."""
        from trainables.loop import train_loop

        out = train_loop(config)
        ctx = ray.train.get_context()
        Path(config["run"]["out_dir"], f"rank{ctx.get_world_rank()}.json").write_text(
            json.dumps({"world": ctx.get_world_size(), "lr": out["lr"], "steps": out["steps"]})
        )

    data = {"kind": "synthetic", "num_train": 16, "num_val": 2, "image_size": 64, "crop": 32, "batch_size": 4}
    cfg = TrainSpec.model_validate(
        {
            "name": "ddp",
            "seed": 3,
            "data": data,
            "model": {"encoder": "resnet18"},
            "optim": {"name": "sgd", "lr": 0.05, "epochs": 2, "schedule": "poly"},
            "run": {"device": "cpu", "out_dir": str(tmp_path)},
        }
    ).model_dump()
    trainer = TorchTrainer(
        record_ranks,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="ddp", storage_path=str(tmp_path / "train")),
    )
    result = trainer.fit()

    sharded = 2  # 16 images / 2 ranks / batch 4 (the whole set would be 4 steps)
    epochs = sorted((m["epoch"], m["steps"]) for _, m in result.best_checkpoints)
    assert epochs == [(0, sharded), (1, sharded)]  # rank 0's report of every epoch
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world"] == 2 and r["steps"] == sharded
        assert r["lr"] == pytest.approx(0.0, abs=1e-9)  # poly reaches 0 at the last step
