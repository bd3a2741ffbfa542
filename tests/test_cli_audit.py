"""`dermacurate audit` on a small dataset whose leaks are known by construction."""

import json

from click.testing import CliRunner

from dagster_project.cli import main


def test_audit_command_reports_and_corrects(tmp_path):
    (tmp_path / "meta.csv").write_text("image_id,lesion\na,L1\nb,L1\nc,L2\nd,L3\ne,L4\n")
    # L1 spans train and test; c/d are a known duplicate pair across val and test.
    (tmp_path / "split.csv").write_text("image_id,split\na,train\nb,test\nc,val\nd,test\ne,train\n")
    (tmp_path / "pairs.csv").write_text("image_a,image_b,note\nc,d,copy\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "audit",
            "--metadata",
            str(tmp_path / "meta.csv"),
            "--split",
            str(tmp_path / "split.csv"),
            "--group-col",
            "lesion",
            "--pairs",
            str(tmp_path / "pairs.csv"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "LEAKS FOUND" in result.output
    report = json.loads((out / "report.json").read_text())
    assert not report["leaks"]["clean"]
    assert report["corrected_leaks"]["clean"]
    corrected = dict(
        line.split(",") for line in (out / "corrected_split.csv").read_text().split()[1:]
    )
    assert corrected == {"a": "train", "b": "train", "c": "train", "d": "train", "e": "train"}
    assert (out / "report.md").read_text().startswith("# Split audit")
