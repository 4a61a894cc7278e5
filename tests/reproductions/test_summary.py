"""`cfkeras-reproduce summary`: every GS − control difference of the
committed reports in one table, without training."""

import json

import numpy as np
import pytest

from cfkeras.reproductions import summary


def table_report(differences):
    return {"command": "cfkeras-reproduce imdb ...", "differences": differences}


def cell(by_seed, p_holm=None):
    d = np.asarray(by_seed, np.float64)
    out = {
        "by_seed": {str(s): v for s, v in enumerate(by_seed)},
        "n": len(d),
        "mean": float(d.mean()),
        "se": float(d.std(ddof=1) / np.sqrt(len(d))),
        "p": 0.5,
    }
    if p_holm is not None:
        out["p_holm"] = p_holm
    return out


def test_summary_reads_each_report_and_computes_the_intervals(tmp_path):
    imdb = {
        "gs": {
            "control": "control",
            "columns": {
                "test_edited": cell([1.0, 2.0, 3.0], p_holm=0.01),
                "amazon": cell([-1.0, 0.0, 1.0], p_holm=1.0),
                "validation": cell([0.0, 0.0, 1.0]),  # not a primary column: left out
            },
        },
        "gs_random_logit": {"control": "control_random_any", "columns": {}},  # not reported
    }
    imdb_report = table_report(imdb)
    imdb_report["commands"] = ["cfkeras-reproduce imdb --seeds 0 1", "cfkeras-reproduce imdb ..."]
    # Its control is flagged not converged: so is every comparison with it.
    imdb_report["convergence"] = {"gs": {"converged": True}, "control": {"converged": False}}
    (tmp_path / "imdb_table3_evidence.json").write_text(json.dumps(imdb_report))
    digits = {
        "command": "python examples/reproduce_digits_table2.py",
        "runs": {
            row: {
                str(s): {"scores": {"test_edited": base(s), "test_hard_edited": base(s)}}
                for s in range(3)
            }
            for row, base in (
                ("augmentation", lambda s: 0.5),
                ("gs_sum", lambda s: 0.51 + 0.01 * s),  # +1, +2, +3 points: p 0.074
            )
        },
    }
    (tmp_path / "digits_table2.json").write_text(json.dumps(digits))
    # A fine-tuned encoder report (examples/gs_encoder.py --mode upper).
    upper = {
        "command": "python examples/gs_encoder.py --mode upper --dataset snli",
        "summary": {
            "100": {
                "difference": {
                    "test_revised_premise": cell([-1.0, -2.0, -3.0], p_holm=0.2),
                    "validation": cell([0.0, 1.0, 2.0]),  # not a primary column
                }
            }
        },
    }
    (tmp_path / "gs_encoder_upper_snli.json").write_text(json.dumps(upper))
    # The same command again with more epochs and a tag; 8 epochs: epoch 8 is
    # the last tenth, so a row with 2 of 3 best epochs there is not converged.
    longer = json.loads(json.dumps(upper))
    longer["args"] = {"epochs": 8}
    longer["summary"]["100"]["control"] = {"best_epochs": [8, 8, 3]}
    longer["summary"]["100"]["gs"] = {"best_epochs": [8, 2, 3]}
    (tmp_path / "gs_encoder_upper_snli_epochs16.json").write_text(json.dumps(longer))
    # A tagged report of all pairs (`--pairs all --tag epochs6`) is read once,
    # under the all-pairs stem, not also as the 100-pair stem's `all_epochs6`.
    all_pairs = json.loads(json.dumps(upper))
    all_pairs["summary"] = {"all": all_pairs["summary"].pop("100")}
    (tmp_path / "gs_encoder_upper_snli_all_epochs6.json").write_text(json.dumps(all_pairs))
    # A running (or cut) command's partial file beside them is not a report:
    # its summary may lack a difference (one row of a seed so far).
    partial = {"command": longer["command"], "summary": {"all": {"control": {}}}}
    (tmp_path / "gs_encoder_upper_snli_all_epochs6.partial.json").write_text(json.dumps(partial))
    out = tmp_path / "out" / "evidence_summary"
    report = summary.main(["--results", str(tmp_path), "--out", str(out)])

    assert "snli_table3_evidence.json" in report["missing"]
    imdb_entries = [e for e in report["entries"] if e["source"] == "imdb_table3_evidence.json"]
    assert [e["column"] for e in imdb_entries] == ["test_edited", "amazon"]
    first = imdb_entries[0]
    # mean 2, s.e. 1/sqrt(3), t(0.975, 2) = 4.3027
    half = 4.302653 / np.sqrt(3)
    assert first["ci95"] == pytest.approx([2.0 - half, 2.0 + half], rel=1e-5)
    # The digits' differences are computed from the runs: +2 points on both columns.
    digit_entries = [e for e in report["entries"] if e["source"] == "digits_table2.json"]
    assert [e["mean"] for e in digit_entries] == pytest.approx([2.0, 2.0])
    upper_entries = [e for e in report["entries"] if e["source"] == "gs_encoder_upper_snli.json"]
    assert [(e["setting"], e["column"], e["mean"]) for e in upper_entries] == [
        ("MiniLM layers 4–5 + MLP head fine-tuned, 100 pairs", "test_revised_premise", -2.0)
    ]
    assert upper_entries[0]["converged"] is None  # no epochs in the report: unknown
    tagged = [e for e in report["entries"] if e["source"] == "gs_encoder_upper_snli_epochs16.json"]
    assert [(e["setting"], e["converged"]) for e in tagged] == [
        ("MiniLM layers 4–5 + MLP head fine-tuned, epochs16, 100 pairs", False)
    ]
    assert [e["converged"] for e in imdb_entries] == [False, False]
    assert [e["converged"] for e in digit_entries] == [None, None]
    assert "gs_encoder_upper_snli_epochs16.json" not in report["missing"]
    all_entries = [
        e for e in report["entries"] if e["source"] == "gs_encoder_upper_snli_all_epochs6.json"
    ]
    assert [e["setting"] for e in all_entries] == [
        "MiniLM layers 4–5 + MLP head fine-tuned, epochs6, all pairs"
    ]
    files = [s["file"] for s in report["sources"]]
    assert files.count("gs_encoder_upper_snli_all_epochs6.json") == 1
    assert not [e for e in report["entries"] if "partial" in e["source"]]
    assert "gs_encoder_full_imdb.json" in report["missing"]
    assert "gs_encoder_upper_imdb_all.json" in report["missing"]
    assert report["verdict"] == {
        "differences": 7,
        "significant_gain": 1,
        "significant_loss": 0,
        "significant_not_converged": 1,
    }
    assert out.with_suffix(".png").stat().st_size > 0
    markdown = out.with_suffix(".md").read_text()
    assert "1 in favour of GS, 0 against it (1 of these from a comparison whose" in markdown
    assert "| test_edited | 3 | +2.00 ± 0.58 |" in markdown
    assert markdown.count("| **no** |") == 3
    # Every command of a report resumed by several is named, in order; a
    # report with one command (digits) keeps the one-line form.
    sources = {s["file"]: s["commands"] for s in report["sources"]}
    assert sources["imdb_table3_evidence.json"] == imdb_report["commands"]
    assert "  - `cfkeras-reproduce imdb --seeds 0 1`\n  - `cfkeras-reproduce imdb ...`" in markdown
    assert "- `digits_table2.json`: `python examples/reproduce_digits_table2.py`" in markdown
