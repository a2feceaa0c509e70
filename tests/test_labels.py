"""The label table: per-visit diagnoses, the ADNI code mapping, and exclusions with reasons."""

from __future__ import annotations

import pytest
from conftest import write_bids

from earlyad.labels import BidsError, build_label_table, map_diagnosis


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CN", "CN"),
        ("MCI", "MCI"),
        ("EMCI", "MCI"),
        ("LMCI", "MCI"),
        ("AD", "AD"),
        ("Dementia", "AD"),
        (" dementia ", "AD"),
        ("SMC", None),
        ("", None),
        (float("nan"), None),
        (None, None),
    ],
)
def test_map_diagnosis_follows_reference(raw, expected):
    assert map_diagnosis(raw) == expected


def test_label_is_the_diagnosis_at_each_visit_not_baseline(tmp_path):
    bids = write_bids(
        tmp_path / "bids",
        {
            "sub-ADNI011S0002": {
                "diagnosis_sc": "CN",
                "sessions": {"ses-M000": "CN", "ses-M012": "MCI", "ses-M024": "Dementia"},
            }
        },
    )
    result = build_label_table(bids)
    got = dict(zip(result.labels["session_id"], result.labels["diagnosis"], strict=True))
    assert got == {"ses-M000": "CN", "ses-M012": "MCI", "ses-M024": "AD"}
    assert list(result.labels["label"]) == [0, 1, 2]
    # age falls back to participants.tsv age_bl plus the months of the session
    assert list(result.labels["age"]) == [70.0, 71.0, 72.0]
    assert result.exclusions.empty


def test_unusable_scans_are_excluded_with_a_reason(tmp_path):
    bids = write_bids(
        tmp_path / "bids",
        {
            "sub-A": {"sessions": {"ses-M000": "SMC", "ses-M006": None, "ses-M012": "CN"}},
            "sub-B": {
                "sessions": {"ses-M000": "AD", "ses-M006": "AD", "ses-M012": "AD"},
                "images": ["ses-M000"],
            },
        },
    )
    (bids / "sub-B" / "ses-M006" / "anat").mkdir(parents=True)  # a session without its T1w
    result = build_label_table(bids)
    assert set(zip(result.labels.participant_id, result.labels.session_id, strict=True)) == {
        ("sub-A", "ses-M012"),
        ("sub-B", "ses-M000"),
    }
    reasons = {(r.participant_id, r.session_id): r.reason for r in result.exclusions.itertuples()}
    assert "'SMC'" in reasons[("sub-A", "ses-M000")]
    assert "labels.diagnosis_map" in reasons[("sub-A", "ses-M000")]
    assert "empty" in reasons[("sub-A", "ses-M006")]
    assert "no T1w image" in reasons[("sub-B", "ses-M006")]
    assert set(result.exclusions["stage"]) == {"labels"}
    # a clinical-only visit (no session folder, as Clinica lists every ADNIMERGE visit) is no scan
    assert ("sub-B", "ses-M012") not in reasons


def test_subject_without_sessions_tsv_uses_baseline_for_baseline_only(tmp_path):
    bids = write_bids(
        tmp_path / "bids",
        {
            "sub-C": {
                "diagnosis_sc": "LMCI",
                "sessions": {"ses-M000": None, "ses-M006": None},
                "sessions_tsv": False,
            },
            "sub-D": {"diagnosis_sc": "", "sessions": {"ses-M000": None}, "sessions_tsv": False},
        },
    )
    result = build_label_table(bids)
    assert result.labels[["participant_id", "session_id", "diagnosis"]].values.tolist() == [
        ["sub-C", "ses-M000", "MCI"]
    ]
    reasons = {(r.participant_id, r.session_id): r.reason for r in result.exclusions.itertuples()}
    assert "baseline session only" in reasons[("sub-C", "ses-M006")]
    assert "no baseline diagnosis" in reasons[("sub-D", "ses-M000")]


def test_sessions_tsv_without_diagnosis_column_is_named(tmp_path):
    bids = write_bids(tmp_path / "bids", {"sub-E": {"sessions": {"ses-M000": "CN"}}})
    path = bids / "sub-E" / "sub-E_sessions.tsv"
    path.write_text("session_id\tage\nses-M000\t70\n")
    with pytest.raises(BidsError, match="sub-E_sessions.tsv.*no diagnosis column"):
        build_label_table(bids)


def test_missing_bids_dir_is_named(tmp_path):
    with pytest.raises(BidsError, match="does not exist"):
        build_label_table(tmp_path / "nope")
