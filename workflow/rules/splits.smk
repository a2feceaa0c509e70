# Splits: subject-level, stratified train/val/test manifests (or the user's, checked).


checkpoint split:
    input:
        labels="results/labels/labels.tsv",
        manifests=user_manifests,
        code=code("splits.py"),
    output:
        train="results/splits/train.tsv",
        val="results/splits/val.tsv",
        test="results/splits/test.tsv",
        exclusions=private_report(
            "results/splits/exclusions.tsv",
            caption="../report/split_exclusions.rst",
            category="Data",
            labels={"table": "exclusions (splits)"},
        ),
        summary=report(
            "results/splits/summary.tsv",
            caption="../report/split_summary.rst",
            category="Data",
            labels={"table": "cohort per split"},
        ),
        balance=report(
            "results/splits/balance.tsv",
            caption="../report/split_balance.rst",
            category="Data",
            labels={"table": "balance tests"},
        ),
        plot=report(
            "results/splits/cohort.png",
            caption="../report/split_plot.rst",
            category="Data",
            labels={"figure": "cohort per split"},
        ),
    log:
        "logs/split/split.log",
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        fractions=lookup(dpath="splits/fractions", within=config),
        seed=lookup(dpath="splits/seed", within=config),
        baseline_only_eval=lookup(dpath="splits/baseline_only_eval", within=config),
        balance_alpha=lookup(dpath="splits/balance_alpha", within=config),
        manifests=lookup(dpath="splits/manifests", within=config),
    script:
        "../scripts/split.py"
