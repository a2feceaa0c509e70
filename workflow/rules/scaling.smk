# The scalability study (REFERENCE.md, Tables 4-5, Figures 8-10): training under each thread
# count of benchmark.threads, measured by Snakemake's benchmark directive, and a table and plots
# with the study's published rows beside ours.


rule scaling_train:
    input:
        index="results/cache/index.tsv",
        code=code(
            "train/model.py", "train/data.py", "train/trainer.py", "train/metrics.py"
        ),
    output:
        log="results/scaling/python_t{threads}/log.tsv",
        device="results/scaling/python_t{threads}/device.txt",
        model=temp("results/scaling/python_t{threads}/model.pt"),
    log:
        "logs/scaling_train/python_t{threads}.log",
    benchmark:
        "benchmarks/scaling/python_t{threads}.tsv"
    conda:
        "../../envs/trainEnv.yaml"
    threads: scaling_threads
    resources:
        mem_mb=16000,
        runtime=180,
    params:
        hp=scaling_hyperparameters,
    script:
        "../scripts/scaling_train.py"


rule scaling_report:
    input:
        benchmarks=expand(
            "benchmarks/scaling/{impl}_t{threads}.tsv",
            impl=SCALING["implementations"],
            threads=SCALING["threads"],
        ),
        devices=expand(
            "results/scaling/{impl}_t{threads}/device.txt",
            impl=SCALING["implementations"],
            threads=SCALING["threads"],
        ),
        code=code("scaling.py"),
    output:
        table=report(
            "results/scaling/scaling.tsv",
            caption="../report/scaling_table.rst",
            category="Performance",
            labels={"table": "scaling vs threads"},
        ),
        elapsed=report(
            "results/scaling/elapsed_min.png",
            caption="../report/scaling_plot.rst",
            category="Performance",
            labels={"figure": "elapsed time vs threads"},
        ),
        cpu_time=report(
            "results/scaling/cpu_time_min.png",
            caption="../report/scaling_plot.rst",
            category="Performance",
            labels={"figure": "CPU time vs threads"},
        ),
        max_rss=report(
            "results/scaling/max_rss_mb.png",
            caption="../report/scaling_plot.rst",
            category="Performance",
            labels={"figure": "MaxRSS vs threads"},
        ),
    log:
        "logs/scaling_report/scaling_report.log",
    localrule: True
    conda:
        "../../envs/trainEnv.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        runs=expand(
            "{impl}:{threads}",
            impl=SCALING["implementations"],
            threads=SCALING["threads"],
        ),
        epochs=scaling_epochs,
        include_study=lookup(dpath="benchmark/include_study", within=config),
    script:
        "../scripts/scaling_report.py"
