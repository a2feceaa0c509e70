# The C++/LibTorch twin of the trainer (issue 8): built once, then one job per grid run named
# <run>_cpp, with the outputs of rule train, so the grid summary and evaluation treat it like
# any run. Selected with training.impl: cpp or both.


CPP_SOURCES = [
    str(Path(workflow.basedir) / "cpp" / f)
    for f in (
        "CMakeLists.txt",
        "src/twin.cpp",
        "src/twin.hpp",
        "src/train_app.cpp",
        "src/test_app.cpp",
    )
]


rule build_cpp:
    input:
        sources=CPP_SOURCES,
        script=str(Path(workflow.basedir) / "scripts" / "build_cpp.sh"),
    output:
        train_app="results/cpp_build/train_app",
        test_app="results/cpp_build/test_app",
    log:
        "logs/cpp/build_cpp.log",
    conda:
        "../../envs/cppEnv.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        build_dir=lambda wildcards, output: Path(output.train_app).parent,
        python=sys.executable,
    shell:
        "PYTHON_HINT={params.python} JOBS={threads} "
        "bash {input.script} {params.build_dir} > {log} 2>&1"


rule train_cpp:
    input:
        index="results/cache/index.tsv",
        train_app="results/cpp_build/train_app",
        code=code("train/cpp_twin.py", "train/data.py", "train/trainer.py"),
    output:
        model="results/training/{run}_cpp/model.pt",
        log=report(
            "results/training/{run}_cpp/log.tsv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{run}_cpp",
            labels={"run": "{run}_cpp", "table": "per-epoch log"},
        ),
        curves=report(
            "results/training/{run}_cpp/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Training",
            subcategory="{run}_cpp",
            labels={"run": "{run}_cpp", "figure": "learning curves"},
        ),
        predictions_val="results/training/{run}_cpp/predictions_val.tsv",
        predictions_test="results/training/{run}_cpp/predictions_test.tsv",
    log:
        "logs/train/{run}_cpp.log",
    benchmark:
        "benchmarks/train/{run}_cpp.tsv"
    conda:
        "../../envs/cppEnv.yaml"
    threads: config["training"]["threads"]
    resources:
        mem_mb=16000,
        runtime=180,
    params:
        hp=run_hyperparameters,
        # the plan and run file of train_app, outside the outputs
        work_dir="results/training_state/{run}_cpp",
    script:
        "../scripts/train_cpp.py"
