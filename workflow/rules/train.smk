# Training: one job per named run of the grid (parallel on the GPU partition), and the grid
# summary that selects a run on VALIDATION metrics only.


rule train:
    input:
        index="results/cache/index.tsv",
        code=code(
            "train/model.py", "train/data.py", "train/trainer.py", "train/metrics.py"
        ),
    output:
        model="results/training/{run}/model.pt",
        log=report(
            "results/training/{run}/log.tsv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{run}",
            labels={"run": "{run}", "table": "per-epoch log"},
        ),
        curves=report(
            "results/training/{run}/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Training",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "learning curves"},
        ),
        predictions_val=private_report(
            "results/training/{run}/predictions_val.tsv",
            caption="../report/predictions.rst",
            category="Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "table": "predictions (validation)"},
        ),
        predictions_test=private_report(
            "results/training/{run}/predictions_test.tsv",
            caption="../report/predictions.rst",
            category="Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "table": "predictions (test)"},
        ),
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    wildcard_constraints:
        run=r"[A-Za-z0-9_.\-]+(?<!_cpp)",  # <name>_cpp is rule train_cpp's (cpp.smk)
    conda:
        "../../envs/trainEnv.yaml"
    threads: config["training"]["threads"]
    resources:
        mem_mb=16000,
        runtime=180,
    params:
        hp=run_hyperparameters,
        # resumable state lives outside the outputs: Snakemake deletes a failed job's outputs
        state_dir="results/training_state/{run}",
    script:
        "../scripts/train.py"


rule grid_summary:
    input:
        logs=expand("results/training/{run}/log.tsv", run=RUNS),
        models=expand("results/training/{run}/model.pt", run=RUNS),
        code=code("train/grid.py"),
    output:
        summary=report(
            "results/training/grid_summary.tsv",
            caption="../report/grid_summary.rst",
            category="Training",
            labels={"table": "grid search"},
        ),
    log:
        "logs/grid_summary/grid_summary.log",
    localrule: True
    conda:
        "../../envs/trainEnv.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        runs=RUNS,
        select_on=lookup(dpath="training/select_on", within=config),
    script:
        "../scripts/grid_summary.py"
