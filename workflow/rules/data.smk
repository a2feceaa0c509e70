# Data: the synthetic ADNI download, the pre-conversion check, Clinica's ADNI-to-BIDS conversion
# and the per-scan label table.


rule synthesize:
    input:
        code=code("synth/brain.py", "synth/cohort.py"),
    output:
        adni=directory("results/synthetic/ADNI"),
        clinical=directory("results/synthetic/clinical"),
        truth=directory("results/synthetic/ground_truth"),
    log:
        "logs/synthesize/synthesize.log",
    benchmark:
        "benchmarks/synthesize.tsv"
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=lookup(dpath="synthetic", within=config),
    script:
        "../scripts/synthesize.py"


rule check_adni:
    input:
        unpack(adni_download),
        code=code("adni.py"),
    output:
        report="results/adni_check/report.tsv",
    log:
        "logs/check_adni/check_adni.log",
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/check_adni.py"


rule adni_to_bids:
    input:
        unpack(adni_download),
        check="results/adni_check/report.tsv",
    output:
        bids=directory("results/bids"),
    log:
        "logs/adni_to_bids/adni_to_bids.log",
    benchmark:
        "benchmarks/adni_to_bids.tsv"
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        # NIPYPE_NO_ET: no online version check (compute nodes are offline);
        # CLINICA_LOGGING_DIR: keep Clinica's pypeline.log out of the working directory.
        "export NIPYPE_NO_ET=1 CLINICA_LOGGING_DIR=$(dirname {log}); "
        "clinica convert adni-to-bids {input.adni} {input.clinical} {output.bids} -m T1"
        " > {log} 2>&1"


rule labels:
    input:
        bids=bids_dir,
        code=code("labels.py"),
    output:
        labels="results/labels/labels.tsv",
        exclusions=private_report(
            "results/labels/exclusions.tsv",
            caption="../report/exclusions.rst",
            category="Data",
            labels={"table": "exclusions (labels)"},
        ),
    log:
        "logs/labels/labels.log",
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        diagnosis_map=lookup(dpath="labels/diagnosis_map", within=config),
    script:
        "../scripts/labels.py"
