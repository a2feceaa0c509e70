# Preprocessing: MNI templates, t1-linear per scan, the study template from the training split,
# normalization + intensity standardization + tensor cache per scan, and QC.


rule templates:
    input:
        code=code("preprocess/templates.py"),
    output:
        mni="results/templates/mni_icbm152_t1_tal_nlin_sym_09c.nii",
        cropped="results/templates/ref_cropped_template.nii.gz",
        mask="results/templates/mni_cropped_brainmask.nii.gz",
        marker="results/templates/TEMPLATE_SOURCE.txt",
    log:
        "logs/templates/templates.log",
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        source=lookup(dpath="templates/source", within=config),
        mni=lookup(dpath="templates/mni", within=config),
        cropped=lookup(dpath="templates/mni_cropped", within=config),
    script:
        "../scripts/templates.py"


rule t1_linear:
    input:
        image=scan_image,
        mni="results/templates/mni_icbm152_t1_tal_nlin_sym_09c.nii",
        cropped="results/templates/ref_cropped_template.nii.gz",
        mask="results/templates/mni_cropped_brainmask.nii.gz",
        code=code("preprocess/t1_linear.py", "preprocess/stages.py"),
    output:
        directory("results/t1_linear/{participant_id}/{session_id}"),
    log:
        "logs/t1_linear/{participant_id}_{session_id}.log",
    benchmark:
        "benchmarks/t1_linear/{participant_id}_{session_id}.tsv"
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: PREP["threads"]
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        backend=lookup(dpath="preprocessing/backend", within=config),
        seed=lookup(dpath="preprocessing/seed", within=config),
        on_bad_scan=lookup(dpath="preprocessing/on_bad_scan", within=config),
        source=lookup(dpath="templates/source", within=config),
    script:
        "../scripts/t1_linear.py"


rule study_template:
    input:
        train="results/splits/train.tsv",
        scans=train_t1_linear,
        initial="results/templates/ref_cropped_template.nii.gz",
        mask="results/templates/mni_cropped_brainmask.nii.gz",
        code=code("preprocess/study_template.py"),
    output:
        template="results/template/study_template.nii.gz",
        inputs="results/template/study_template_inputs.json",
    log:
        "logs/study_template/study_template.log",
    benchmark:
        "benchmarks/study_template.tsv"
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        iterations=lookup(dpath="preprocessing/template_iterations", within=config),
        max_images=lookup(dpath="preprocessing/template_max_images", within=config),
        seed=lookup(dpath="preprocessing/seed", within=config),
    script:
        "../scripts/study_template.py"


rule normalize:
    input:
        t1_linear="results/t1_linear/{participant_id}/{session_id}",
        template=normalization_template,
        mask="results/templates/mni_cropped_brainmask.nii.gz",
        code=code("preprocess/normalize.py", "preprocess/montage.py"),
    output:
        directory("results/normalized/{participant_id}/{session_id}"),
    log:
        "logs/normalize/{participant_id}_{session_id}.log",
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        template=lookup(dpath="preprocessing/template", within=config),
        voxel_size=lookup(dpath="preprocessing/voxel_size", within=config),
        intensity=lookup(dpath="preprocessing/intensity", within=config),
        percentiles=lookup(dpath="preprocessing/percentiles", within=config),
        seed=lookup(dpath="preprocessing/seed", within=config),
        on_bad_scan=lookup(dpath="preprocessing/on_bad_scan", within=config),
    script:
        "../scripts/normalize.py"


rule qc:
    input:
        manifests=expand("results/splits/{split}.tsv", split=SPLITS),
        scans=all_normalized,
        code=code("preprocess/qc.py"),
    output:
        qc=private_report(
            "results/qc/qc.tsv",
            caption="../report/qc_table.rst",
            category="Preprocessing",
            labels={"table": "QC per scan"},
        ),
        plot=report(
            "results/qc/qc.png",
            caption="../report/qc_plot.rst",
            category="Preprocessing",
            labels={"figure": "QC metrics"},
        ),
        exclusions=private_report(
            "results/qc/exclusions.tsv",
            caption="../report/qc_exclusions.rst",
            category="Preprocessing",
            labels={"table": "exclusions (preprocessing and QC)"},
        ),
        index="results/cache/index.tsv",
        montages=private_report(
            directory("results/qc/montages"),
            patterns=["{name}.png"],
            caption="../report/qc_montage.rst",
            category="Preprocessing",
            subcategory="Montages",
            labels={"scan": "{name}"},
        ),
    log:
        "logs/qc/qc.log",
    localrule: True
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        thresholds=lookup(dpath="qc", within=config),
    script:
        "../scripts/qc.py"
