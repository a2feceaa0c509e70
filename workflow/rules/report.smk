# Report: de-identified aggregates, shown whether or not the report is shareable (subject-level
# tables and images are left out of a shareable report by private_report in common.smk).


rule exclusion_counts:
    input:
        labels="results/labels/exclusions.tsv",
        splits="results/splits/exclusions.tsv",
        qc="results/qc/exclusions.tsv",
        code=code("deidentify.py"),
    output:
        counts=report(
            "results/report/exclusion_counts.tsv",
            caption="../report/exclusion_counts.rst",
            category="Data",
            labels={"table": "exclusions (counts)"},
        ),
    log:
        "logs/exclusion_counts/exclusion_counts.log",
    localrule: True
    conda:
        "../../envs/trainEnv.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/exclusion_counts.py"
