"""Subject-level, stratified train/val/test splits and the checks every manifest must pass.

The reference study split by scan, so 61% of its test scans came from subjects also seen in
training (REFERENCE.md, defect 1). Here the unit of splitting is the subject: all visits of a
subject stay in one split, and :func:`check_disjoint` refuses any manifest set, ours or a user's,
that places one subject in two splits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from earlyad import CLASSES
from earlyad.tables import exclusions_frame, read_tsv

SPLITS: tuple[str, str, str] = ("train", "val", "test")
STAGE = "splits"
#: Re-draws tried (with seeds derived from the configured one) to reach age/sex balance.
MAX_ATTEMPTS = 25


class SplitLeakError(ValueError):
    """A subject appears in more than one split."""


class ManifestError(ValueError):
    """A user-supplied manifest is malformed or names scans that do not exist."""


@dataclass(frozen=True)
class SplitConfig:
    """Settings of the split; defaults are the study's 70/15/15 proportions."""

    fractions: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15}
    )
    seed: int = 0
    baseline_only_eval: bool = False
    balance_alpha: float = 0.05


@dataclass
class SplitResult:
    """Manifests per split, the balance tests, a per-split summary and the exclusions."""

    manifests: dict[str, pd.DataFrame]
    balance: pd.DataFrame
    summary: pd.DataFrame
    exclusions: pd.DataFrame
    attempt: int = 0


def subject_table(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per subject: first-visit diagnosis (the stratum), age at first visit and sex."""
    ordered = labels.sort_values(["participant_id", "session_id"])
    first = ordered.groupby("participant_id", sort=True).first()
    return first[["diagnosis", "age", "sex"]]


def _allocate(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of ``n`` subjects, at least one per non-empty eval split."""
    raw = {k: n * fractions[k] for k in SPLITS}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    order = sorted(SPLITS, key=lambda k: raw[k] - counts[k], reverse=True)
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    for k in ("val", "test"):  # a class absent from val or test makes its AUC undefined
        if counts[k] == 0 and fractions[k] > 0 and counts["train"] > 1:
            counts[k] += 1
            counts["train"] -= 1
    return counts


def assign_subjects(subjects: pd.DataFrame, fractions: Mapping[str, float], seed: int) -> pd.Series:
    """Split subjects stratified by diagnosis; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for dx in sorted(subjects["diagnosis"].unique()):
        ids = np.array(sorted(subjects.index[subjects["diagnosis"] == dx]))
        rng.shuffle(ids)
        counts = _allocate(len(ids), fractions)
        start = 0
        for split in SPLITS:
            for pid in ids[start : start + counts[split]]:
                assignment[str(pid)] = split
            start += counts[split]
    return pd.Series(assignment, name="split").sort_index()


def balance_tests(subjects: pd.DataFrame, assignment: pd.Series) -> pd.DataFrame:
    """Tests that the splits do not differ in age (Kruskal-Wallis) or sex/diagnosis (chi-square).

    Subject-level, on first-visit values, so that subjects with many visits do not weigh more.
    """
    table = subjects.join(assignment)
    rows = []
    ages = [g["age"].dropna().to_numpy(float) for _, g in table.groupby("split")]
    ages = [a for a in ages if len(a) > 0]
    if len(ages) >= 2 and len(np.unique(np.concatenate(ages))) > 1:
        stat, p = stats.kruskal(*ages)
        rows.append({"variable": "age", "test": "Kruskal-Wallis", "statistic": stat, "p_value": p})
    for var in ("sex", "diagnosis"):
        sub = table[table[var].isin(["M", "F"])] if var == "sex" else table
        cont = pd.crosstab(sub["split"], sub[var])
        cont = cont.loc[cont.sum(axis=1) > 0, cont.sum(axis=0) > 0]
        if cont.shape[0] >= 2 and cont.shape[1] >= 2:
            stat, p, _, _ = stats.chi2_contingency(cont)
            rows.append({"variable": var, "test": "chi-square", "statistic": stat, "p_value": p})
        else:
            rows.append(
                {"variable": var, "test": "chi-square", "statistic": np.nan, "p_value": np.nan}
            )
    return pd.DataFrame(rows, columns=["variable", "test", "statistic", "p_value"])


def _balanced(balance: pd.DataFrame, alpha: float) -> bool:
    p = balance["p_value"].dropna()
    return bool((p >= alpha).all())


def summarise(manifests: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Counts by class, age and sex per split (the cohort table of the report)."""
    rows = []
    for split in SPLITS:
        df = manifests[split]
        row: dict[str, object] = {
            "split": split,
            "subjects": df["participant_id"].nunique(),
            "scans": len(df),
        }
        for dx in CLASSES:
            row[f"scans_{dx}"] = int((df["diagnosis"] == dx).sum())
        ages = pd.to_numeric(df["age"], errors="coerce")
        row["age_mean"] = round(float(ages.mean()), 1) if ages.notna().any() else np.nan
        row["age_sd"] = round(float(ages.std()), 1) if ages.notna().sum() > 1 else np.nan
        firsts = df.sort_values("session_id").groupby("participant_id").first()
        row["female_subjects"] = int((firsts["sex"] == "F").sum())
        row["male_subjects"] = int((firsts["sex"] == "M").sum())
        rows.append(row)
    return pd.DataFrame(rows)


def check_disjoint(manifests: Mapping[str, pd.DataFrame]) -> None:
    """Refuse manifests that put one subject in two splits (the study's leak).

    Raises:
        SplitLeakError: naming every leaking subject and the splits it appears in.
    """
    seen: dict[str, set[str]] = {}
    for split, df in manifests.items():
        for pid in df["participant_id"].astype(str).unique():
            seen.setdefault(pid, set()).add(split)
    leaks = {pid: sorted(s) for pid, s in seen.items() if len(s) > 1}
    if leaks:
        shown = "; ".join(f"{pid} in {' and '.join(s)}" for pid, s in sorted(leaks.items())[:10])
        more = f" (and {len(leaks) - 10} more)" if len(leaks) > 10 else ""
        raise SplitLeakError(
            f"{len(leaks)} subject(s) appear in more than one split: {shown}{more}. "
            "All visits of a subject must stay in one split; fix the manifests."
        )


def _eval_baseline_only(manifests: dict[str, pd.DataFrame], excluded: list[dict[str, str]]) -> None:
    for split in ("val", "test"):
        df = manifests[split].sort_values(["participant_id", "session_id"])
        first = df.groupby("participant_id").head(1)
        for rec in df.drop(first.index).to_dict("records"):
            excluded.append(
                {
                    "participant_id": rec["participant_id"],
                    "session_id": rec["session_id"],
                    "stage": STAGE,
                    "reason": f"follow-up visit left out of {split} (splits.baseline_only_eval)",
                }
            )
        manifests[split] = first.reset_index(drop=True)


def make_splits(labels: pd.DataFrame, config: SplitConfig) -> SplitResult:
    """Split the label table by subject, stratified by first-visit diagnosis.

    When the age/sex/diagnosis tests reject balance at ``balance_alpha``, the split is redrawn
    with seeds derived from ``config.seed`` (up to :data:`MAX_ATTEMPTS`); the first balanced draw
    is kept, so the result stays deterministic for a seed. The tests of the kept draw are
    returned either way, so the report can show them.
    """
    if labels.empty:
        raise ValueError("the label table is empty: no scan has a usable diagnosis and image")
    subjects = subject_table(labels)
    chosen: tuple[int, pd.Series, pd.DataFrame] | None = None
    for attempt in range(MAX_ATTEMPTS):
        seed = int(np.random.SeedSequence([config.seed, attempt]).generate_state(1)[0])
        assignment = assign_subjects(subjects, config.fractions, seed)
        balance = balance_tests(subjects, assignment)
        if chosen is None:
            chosen = (attempt, assignment, balance)
        if _balanced(balance, config.balance_alpha):
            chosen = (attempt, assignment, balance)
            break
    assert chosen is not None
    attempt, assignment, balance = chosen
    balance["balanced"] = balance["p_value"].isna() | (balance["p_value"] >= config.balance_alpha)
    table = labels.merge(assignment, left_on="participant_id", right_index=True)
    manifests = {
        s: table[table["split"] == s].drop(columns="split").reset_index(drop=True) for s in SPLITS
    }
    excluded: list[dict[str, str]] = []
    if config.baseline_only_eval:
        _eval_baseline_only(manifests, excluded)
    check_disjoint(manifests)
    return SplitResult(
        manifests=manifests,
        balance=balance,
        summary=summarise(manifests),
        exclusions=exclusions_frame(excluded),
        attempt=attempt,
    )


def load_manifests(
    paths: Mapping[str, Path | str], labels: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Read user-supplied manifests and join them to the label table.

    Each manifest needs ``participant_id`` and ``session_id``; labels, ages and image paths come
    from the label table, so a manifest cannot smuggle in a baseline label for a follow-up visit.

    Raises:
        ManifestError: a file is missing, lacks a column, or names a scan that has no label.
        SplitLeakError: a subject appears in two manifests.
    """
    keyed = labels.set_index(["participant_id", "session_id"])
    out: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = Path(paths[split])
        if not path.exists():
            raise ManifestError(f"manifest for '{split}' ('{path}') does not exist")
        df = read_tsv(path)
        missing = {"participant_id", "session_id"} - set(df.columns)
        if missing:
            raise ManifestError(
                f"manifest '{path}' lacks column(s) {sorted(missing)}; ClinicaDL-style "
                "manifests need participant_id and session_id"
            )
        pairs = list(zip(df["participant_id"], df["session_id"], strict=True))
        unknown = [p for p in pairs if p not in keyed.index]
        if unknown:
            shown = ", ".join(f"{a} {b}" for a, b in unknown[:5])
            raise ManifestError(
                f"manifest '{path}' names {len(unknown)} scan(s) absent from the label table "
                f"(no image or no usable diagnosis; see the exclusions table): {shown}"
            )
        out[split] = keyed.loc[pairs].reset_index()
    check_disjoint(out)
    return out


def split_from_manifests(
    paths: Mapping[str, Path | str], labels: pd.DataFrame, alpha: float
) -> SplitResult:
    """Use the user's manifests as they are, with the same checks and reports as our splits."""
    manifests = load_manifests(paths, labels)
    subjects = subject_table(pd.concat(manifests.values()))
    assignment = pd.concat(
        [pd.Series(s, index=sorted(df["participant_id"].unique())) for s, df in manifests.items()]
    ).rename("split")
    balance = balance_tests(subjects, assignment)
    balance["balanced"] = balance["p_value"].isna() | (balance["p_value"] >= alpha)
    return SplitResult(manifests, balance, summarise(manifests), exclusions_frame([]))


def plot_cohort(manifests: Mapping[str, pd.DataFrame], path: Path | str) -> None:
    """Bar chart of scans per class and age box plots per split: the split at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"CN": "#2ca02c", "MCI": "#e6b800", "AD": "#d62728"}
    fig, (ax_n, ax_age) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    x = np.arange(len(SPLITS))
    width = 0.27
    for i, dx in enumerate(CLASSES):
        counts = [int((manifests[s]["diagnosis"] == dx).sum()) for s in SPLITS]
        ax_n.bar(x + (i - 1) * width, counts, width, label=dx, color=colours[dx])
    ax_n.set_xticks(x, [f"{s}\n({manifests[s]['participant_id'].nunique()} subj.)" for s in SPLITS])
    ax_n.set_ylabel("scans")
    ax_n.set_title("Scans per class and split")
    ax_n.legend()
    data = [pd.to_numeric(manifests[s]["age"], errors="coerce").dropna() for s in SPLITS]
    ax_age.boxplot([d.to_numpy() if len(d) else [np.nan] for d in data], tick_labels=list(SPLITS))
    ax_age.set_ylabel("age at visit (years)")
    ax_age.set_title("Age per split")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
