# Grad-CAM: atlas regions on the normalized grid (once), then maps, GIFs, group maps, region and
# localization tables for each trained run of the grid.


rule gradcam_atlas:
    input:
        template=normalization_template,
        mni="results/templates/ref_cropped_template.nii.gz",
        mask="results/templates/mni_cropped_brainmask.nii.gz",
        code=code(
            "gradcam/atlas.py",
            "gradcam/regions.py",
            "gradcam/transforms.py",
            "synth/brain.py",
        ),
    output:
        regions="results/atlas/regions.nii.gz",
        brain="results/atlas/brain_mask.nii.gz",
        table=report(
            "results/atlas/regions.tsv",
            caption="../report/gradcam_atlas.rst",
            category="Explainability",
            labels={"table": "atlas regions"},
        ),
        transform="results/atlas/template_to_mni.json",
    log:
        "logs/gradcam_atlas/gradcam_atlas.log",
    conda:
        "../../envs/clinicaEnv.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        template=lookup(dpath="preprocessing/template", within=config),
        voxel_size=lookup(dpath="preprocessing/voxel_size", within=config),
        seed=lookup(dpath="preprocessing/seed", within=config),
    script:
        "../scripts/gradcam_atlas.py"


rule gradcam:
    input:
        unpack(gradcam_inputs),
        model="results/training/{run}/model.pt",
        regions="results/atlas/regions.nii.gz",
        brain="results/atlas/brain_mask.nii.gz",
        code=code(
            "gradcam/stage.py",
            "gradcam/maps.py",
            "gradcam/threshold.py",
            "gradcam/scores.py",
            "gradcam/figures.py",
            "gradcam/regions.py",
            "gradcam/transforms.py",
            "preprocess/montage.py",
            "train/model.py",
            "train/trainer.py",
        ),
    output:
        scans=directory("results/gradcam/{run}/scans"),
        # per-subject images: the only gradcam report entry left out of a shareable report
        montages=private_report(
            directory("results/gradcam/{run}/montages"),
            patterns=["{name}.png"],
            caption="../report/gradcam_montage.rst",
            category="Explainability",
            subcategory="{run}: per scan",
            labels={"run": "{run}", "scan": "{name}"},
        ),
        group=directory("results/gradcam/{run}/group"),
        group_montage=report(
            "results/gradcam/{run}/group_montage.png",
            caption="../report/gradcam_group.rst",
            category="Explainability",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "group Grad-CAM maps"},
        ),
        table="results/gradcam/{run}/scans.tsv",
        regions=report(
            "results/gradcam/{run}/regions.tsv",
            caption="../report/gradcam_regions.rst",
            category="Explainability",
            subcategory="{run}",
            labels={"run": "{run}", "table": "Grad-CAM mass per region"},
        ),
        localization=report(
            "results/gradcam/{run}/localization.tsv",
            caption="../report/gradcam_localization.rst",
            category="Explainability",
            subcategory="{run}",
            labels={"run": "{run}", "table": "localization vs ground truth"},
        ),
        settings="results/gradcam/{run}/settings.json",
    log:
        "logs/gradcam/{run}.log",
    benchmark:
        "benchmarks/gradcam/{run}.tsv"
    conda:
        "../../envs/gradcamEnv.yaml"
    threads: config["gradcam"]["threads"]
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        settings=gradcam_settings,
        normalized_root="results/normalized",
        t1_linear_root="results/t1_linear",
    script:
        "../scripts/gradcam.py"
