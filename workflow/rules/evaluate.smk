# Evaluation: per grid run, every metric with a bootstrap interval resampled by subject and the
# test figures; then the grid summary with the chosen run's test metrics and the comparison with
# the study's published figures.


rule evaluate:
    input:
        val="results/training/{run}/predictions_val.tsv",
        test="results/training/{run}/predictions_test.tsv",
        code=code(
            "evaluate/metrics.py",
            "evaluate/plots.py",
            "evaluate/stage.py",
            "train/metrics.py",
        ),
    output:
        metrics_json="results/evaluation/{run}/metrics.json",
        metrics_tsv=report(
            "results/evaluation/{run}/metrics.tsv",
            caption="../report/eval_metrics.rst",
            category="Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "table": "metrics with intervals"},
        ),
        confusion=report(
            "results/evaluation/{run}/confusion_matrix.png",
            caption="../report/eval_confusion.rst",
            category="Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "confusion matrix"},
        ),
        radar=report(
            "results/evaluation/{run}/radar.png",
            caption="../report/eval_radar.rst",
            category="Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "precision / recall / F1"},
        ),
        roc=report(
            "results/evaluation/{run}/roc.png",
            caption="../report/eval_roc.rst",
            category="Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "ROC curves"},
        ),
    log:
        "logs/evaluate/{run}.log",
    conda:
        "../../envs/trainEnv.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        bootstrap=lookup(dpath="evaluation/bootstrap", within=config),
        seed=lookup(dpath="evaluation/seed", within=config),
        ci=lookup(dpath="evaluation/ci", within=config),
    script:
        "../scripts/evaluate.py"


rule evaluation_summary:
    input:
        grid="results/training/grid_summary.tsv",
        metrics=expand("results/evaluation/{run}/metrics.json", run=RUNS),
        logs=expand("results/training/{run}/log.tsv", run=RUNS),
        predictions=expand("results/training/{run}/predictions_test.tsv", run=RUNS),
        train="results/splits/train.tsv",
        code=code(
            "evaluate/compare.py",
            "evaluate/summary.py",
            "evaluate/stage.py",
            "evaluate/plots.py",
        ),
    output:
        grid=report(
            "results/evaluation/grid_summary.tsv",
            caption="../report/eval_grid_summary.rst",
            category="Evaluation",
            subcategory="Summary",
            labels={"table": "grid search with test metrics"},
        ),
        comparison=report(
            "results/evaluation/comparison.tsv",
            caption="../report/eval_comparison.rst",
            category="Evaluation",
            subcategory="Summary",
            labels={"table": "comparison with the study"},
        ),
        comparison_plot=report(
            "results/evaluation/comparison.png",
            caption="../report/eval_comparison_plot.rst",
            category="Evaluation",
            subcategory="Summary",
            labels={"figure": "comparison with the study"},
        ),
        training_cost=report(
            "results/evaluation/training_cost.tsv",
            caption="../report/training_cost.rst",
            category="Performance",
            labels={"table": "training cost per run"},
        ),
    log:
        "logs/evaluation_summary/evaluation_summary.log",
    localrule: True
    conda:
        "../../envs/trainEnv.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        runs=RUNS,
    script:
        "../scripts/evaluation_summary.py"
