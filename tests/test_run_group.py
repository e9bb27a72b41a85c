"""Run groups (`fit --seeds`, `evaluate GROUP`): seeds, the t interval over seeds, group files.

One module fixture trains a real group (2 seeds x 1 epoch of 2 steps, via the CLI); every other
test uses a stand-in for `train` that writes what a finished run holds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from can_tf.config import RunConfig
from can_tf.errors import ConfigError, EvaluationError, RunError
from can_tf.labels import CLASS_NAMES
from can_tf.run_group import (
    GROUP_FILE,
    RunGroup,
    evaluation_summary,
    fit_seeds,
    group_metrics,
    is_group,
    member_dir,
    parse_seeds,
    seed_summary,
)
from can_tf_cli.main import main

QUICK = ["--epochs", "1", "--batch-size", "8", "--set", "train.steps_per_epoch=2",
         "--set", "data.augment=false", "--set", "train.verbose=2"]


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ---- parse_seeds --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seeds", [("0,1,2", [0, 1, 2]), ("0-4", [0, 1, 2, 3, 4]), ("3", [3]),
                                         (" 5 , 2 ", [5, 2]), ("0-1,7", [0, 1, 7]), ("4-4", [4])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, words", [("", "empty"), ("  ", "empty"), ("0,1,0", "more than once"),
                                         ("0-2,1", "more than once"), ("-1", ">= 0"), ("1,-3", ">= 0"),
                                         ("1.5", "not a non-negative integer"), ("a", "not a non-negative"),
                                         ("0,,1", "not a non-negative"), ("4-2", "backwards")])
def test_parse_seeds_errors_name_the_option(text, words):
    with pytest.raises(ConfigError) as e:
        parse_seeds(text)
    message = str(e.value)
    assert "--seeds" in message and words in message and "\n" not in message


def test_member_dir_and_is_group(tmp_path):
    assert member_dir(tmp_path, 3) == tmp_path / "seed-3"
    assert not is_group(tmp_path)
    (tmp_path / GROUP_FILE).write_text("{}")
    assert is_group(tmp_path) and not is_group(tmp_path / GROUP_FILE)


# ---- seed_summary -------------------------------------------------------------------------------
def test_seed_summary_matches_the_t_interval_by_hand():
    from scipy import stats

    s = seed_summary([0.60, 0.62, 0.64])
    # mean 0.62; sd = sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02; t(0.975, 2 df) = 4.302653 (tables)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert s.n == 3 and s.mean == pytest.approx(0.62) and s.sd == pytest.approx(0.02)
    assert (s.low, s.high) == (pytest.approx(0.62 - half, abs=1e-6), pytest.approx(0.62 + half, abs=1e-6))
    assert s.text() == "0.620 ± 0.020 [0.570, 0.670] over 3 seeds"
    assert s.spread_text() == "0.600..0.640"

    values = [0.71, 0.69, 0.74, 0.70, 0.73]
    s90 = seed_summary(values, confidence=0.90)
    sd = math.sqrt(sum((v - 0.714) ** 2 for v in values) / 4)
    # scipy's interval of the mean as an independent reference
    low, high = stats.t.interval(0.90, 4, loc=np.mean(values), scale=stats.sem(values))
    assert s90.sd == pytest.approx(sd) and s90.low == pytest.approx(low) and s90.high == pytest.approx(high)
    assert s90.to_dict()["min"] == 0.69 and s90.to_dict()["max"] == 0.74 and s90.values == values


def test_seed_summary_with_fewer_than_two_values_and_bad_input():
    one = seed_summary([0.7])
    assert (one.n, one.mean, one.sd, one.low, one.high) == (1, 0.7, None, None, None)
    assert one.text() == "0.700 over 1 seed"
    none = seed_summary([])
    assert none.n == 0 and none.mean is None and none.text() == "n/a"
    with pytest.raises(EvaluationError, match="finite"):
        seed_summary([0.5, float("nan")])
    with pytest.raises(EvaluationError, match="confidence"):
        seed_summary([0.5, 0.6], confidence=1.0)


# ---- fit_seeds with a stand-in for train ----------------------------------------------------------
def _fake_train(calls):
    """A `train` that writes what a finished run holds: config.yaml, history.csv, metrics.json."""
    from can_tf.files import write_json
    from can_tf.run import Run
    from can_tf.training.trainer import RunResult

    def train(config, extend=False):
        calls.append((config.train.seed, config.train.run_dir, config.data.seed, extend))
        run = Run(config.train.run_dir)
        run.root.mkdir(parents=True, exist_ok=True)
        config.save(str(run.config_path))
        auroc = {"Mass": 0.5 + config.train.seed / 100, "Edema": None}
        metrics = {"test_auroc": auroc, "test_mean_auroc": auroc["Mass"], "best_epoch": 1, "epochs_run": 1,
                   "stop_reason": "completed", "num_test_images": 4}
        run.history.write_text("epoch,val_mean_auroc\n0,0.5\n")
        write_json(run.metrics, metrics)
        return RunResult(run_dir=str(run.root), test_auroc=auroc, test_mean_auroc=auroc["Mass"], best_epoch=1,
                         metrics=metrics)

    return train


@pytest.fixture
def fake_train(monkeypatch):
    calls = []
    monkeypatch.setattr("can_tf.training.trainer.train", _fake_train(calls))
    return calls


def _config(root, **train):
    overrides = [f"train.run_dir={json.dumps(str(root))}", "data.seed=7"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return RunConfig.resolve("small", overrides=overrides)


def test_fit_seeds_writes_the_group_and_resumes_it(tmp_path, fake_train):
    root = tmp_path / "group"
    starts = []
    results = fit_seeds(_config(root), [0, 1], on_member=lambda *a: starts.append(a))
    assert starts == [(0, 1, 2), (1, 2, 2)]
    assert fake_train == [(0, str(root / "seed-0"), 7, False), (1, str(root / "seed-1"), 7, False)]
    assert [r.test_mean_auroc for r in results] == [0.5, 0.51]
    saved = json.loads((root / GROUP_FILE).read_text())
    assert saved["seeds"] == [0, 1] and saved["members"] == ["seed-0", "seed-1"]
    assert saved["config"]["data"]["seed"] == 7 and saved["config"]["train"]["run_dir"] == str(root)
    group = RunGroup.load(root)
    assert group.seeds == [0, 1] and group.members == [root / "seed-0", root / "seed-1"]
    assert group.finished_members() == group.members

    # Again with one more seed: the finished members are read back, only seed 2 trains.
    fake_train.clear()
    again = fit_seeds(_config(root), [0, 1, 2])
    assert [c[0] for c in fake_train] == [2]
    assert [r.test_mean_auroc for r in again] == [0.5, 0.51, 0.52] and again[0].best_epoch == 1
    assert again[0].test_auroc == {"Mass": 0.5, "Edema": None} and again[0].epochs_run == 1
    assert RunGroup.load(root).seeds == [0, 1, 2]
    # Other seeds on the same group extend its list and keep its members.
    fit_seeds(_config(root), [5])
    assert RunGroup.load(root).seeds == [0, 1, 2, 5]

    # group_metrics: per class and mean over the finished members, an undefined class left out
    (root / "seed-5" / "metrics.json").unlink()  # an unfinished member
    m = group_metrics(root)
    assert m["seeds"] == [0, 1, 2] and m["unfinished"] == [str(root / "seed-5")]
    assert m["per_class"]["Mass"]["mean"] == pytest.approx(0.51)
    assert m["per_class"]["Mass"]["by_seed"] == {"0": 0.5, "1": 0.51, "2": 0.52}
    assert m["per_class"]["Edema"]["n"] == 0 and m["per_class"]["Edema"]["mean"] is None
    assert m["mean"]["sd"] == pytest.approx(0.01)


def test_fit_seeds_refuses_another_config_and_a_single_run(tmp_path, fake_train):
    root = tmp_path / "group"
    fit_seeds(_config(root), [0])
    with pytest.raises(ConfigError) as e:
        fit_seeds(_config(root, learning_rate=0.5), [1])
    assert "another config" in str(e.value) and "train.learning_rate" in str(e.value)
    assert RunGroup.load(root).seeds == [0]  # unchanged
    # a different train.seed in the base config is not a difference
    fit_seeds(_config(root, seed=9), [1])
    assert RunGroup.load(root).seeds == [0, 1]

    single = tmp_path / "single"
    single.mkdir()
    (single / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="single run"):
        fit_seeds(_config(single), [0])
    with pytest.raises(ConfigError, match="distinct"):
        fit_seeds(_config(tmp_path / "dup"), [1, 1])
    assert not (tmp_path / "dup").exists()


def test_fit_seeds_extend_trains_finished_members_further(tmp_path, fake_train):
    root = tmp_path / "group"
    fit_seeds(_config(root, epochs=1), [0, 1])
    fake_train.clear()
    fit_seeds(_config(root, epochs=3), [0, 1], extend=True)
    assert [(c[0], c[3]) for c in fake_train] == [(0, True), (1, True)]
    assert RunGroup.load(root).config["train"]["epochs"] == 3
    fake_train.clear()
    fit_seeds(_config(root, epochs=3), [0, 1], extend=True)  # already extended: nothing to do
    assert fake_train == []


def test_load_names_the_file_at_fault(tmp_path):
    with pytest.raises(RunError, match="group.json"):
        RunGroup.load(tmp_path)
    (tmp_path / GROUP_FILE).write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        RunGroup.load(tmp_path)
    (tmp_path / GROUP_FILE).write_text(json.dumps({"seeds": [0], "members": ["seed-0"], "config": {}}))
    with pytest.raises(RunError) as e:
        RunGroup.load(tmp_path)
    assert str(tmp_path / "seed-0") in str(e.value)


def test_evaluation_summary_of_member_reports():
    def report(a, b, mean_auroc, mean_auprc):
        return {"split": "test", "class_names": ["Mass", "Edema"],
                "classes": [{"class": "Mass", "auroc": a, "auprc": 0.3}, {"class": "Edema", "auroc": b, "auprc": None}],
                "mean": {"auroc": mean_auroc, "auprc": mean_auprc, "num_classes_averaged": 2}}

    summary = evaluation_summary({0: report(0.6, 0.7, 0.65, 0.3), 1: report(0.8, None, 0.8, 0.3)})
    mass, edema = summary["classes"]
    assert mass["auroc"]["mean"] == pytest.approx(0.7) and mass["auroc"]["sd"] == pytest.approx(math.sqrt(0.02))
    assert edema["auroc"]["n"] == 1 and edema["auroc"]["by_seed"] == {"0": 0.7, "1": None}
    assert summary["mean"]["auroc"]["mean"] == pytest.approx(0.725)
    with pytest.raises(EvaluationError, match="seed 1"):
        evaluation_summary({0: report(0.6, 0.7, 0.65, 0.3), 1: {**report(0.6, 0.7, 0.65, 0.3), "split": "val"}})


# ---- the real thing: one group trained through the CLI --------------------------------------------
@pytest.fixture(scope="module")
def trained_group(tmp_path_factory, phantom_dir):
    root = tmp_path_factory.mktemp("group") / "can"
    result = cli("fit", "--data", str(phantom_dir), "--run-dir", str(root), "--seeds", "0,1", *QUICK)
    assert result.exit_code == 0, result.output
    return root, result.output


def test_fit_seeds_cli_trains_each_seed_and_prints_the_summary(trained_group, phantom_dir):
    import yaml

    root, output = trained_group
    lines = output.splitlines()
    assert f"seed 0 (1 of 2): {root / 'seed-0'}" in lines and f"seed 1 (2 of 2): {root / 'seed-1'}" in lines
    assert output.count("Test AUROC of the best model") == 2
    assert "Test AUROC over 2 seeds (0, 1; Student t interval over seeds):" in output
    assert lines[-1] == f"Run group: {root}"

    # the members: their own train.seed, the same data split
    configs = [yaml.safe_load((root / f"seed-{s}" / "config.yaml").read_text()) for s in (0, 1)]
    assert [c["train"]["seed"] for c in configs] == [0, 1]
    assert configs[0]["data"] == configs[1]["data"]
    for name in ("train.txt", "val.txt", "test.txt"):
        assert (root / "seed-0" / "splits" / name).read_text() == (root / "seed-1" / "splits" / name).read_text()
    # different seeds, different models
    metrics = [json.loads((root / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert metrics[0]["test_auroc"] != metrics[1]["test_auroc"]

    # the Mean row of the summary table: mean ± sd of the two members' test mean AUROC
    means = [m["test_mean_auroc"] for m in metrics]
    mean_row = next(line for line in lines if line.startswith("Mean ") and "±" in line)
    assert f"{np.mean(means):.3f} ± {np.std(means, ddof=1):.3f}" in mean_row
    assert f"{min(means):.3f}..{max(means):.3f}" in mean_row
    for name in CLASS_NAMES:
        assert sum(line.startswith(name + " ") for line in lines) == 3, name  # 2 member tables + summary

    # the same command again: nothing is trained, the results are read back
    stamps = [(root / f"seed-{s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1)]
    again = cli("fit", "--data", str(phantom_dir), "--run-dir", str(root), "--seeds", "0,1", *QUICK)
    assert again.exit_code == 0, again.output
    assert "Epoch 1/1" not in again.output and mean_row in again.output.splitlines()
    assert [(root / f"seed-{s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1)] == stamps

    bad = cli("fit", "--run-dir", str(root), "--seeds", "1,1")
    assert bad.exit_code == 2 and "--seeds" in bad.output


def test_evaluate_group_writes_the_seed_summary(trained_group):
    root, _ = trained_group
    result = cli("evaluate", str(root), "--bootstrap", "20", "--figures", "none", "--gallery", "0",
                 "--thresholds", "none", "--calibration", "off")
    assert result.exit_code == 0, result.output
    out = root / "eval" / "test"
    summary = json.loads((out / "seeds.json").read_text())
    reports = [json.loads((root / f"seed-{s}" / "eval" / "test" / "report.json").read_text()) for s in (0, 1)]
    assert summary["seeds"] == [0, 1] and summary["split"] == "test"
    for metric in ("auroc", "auprc"):
        values = [r["mean"][metric] for r in reports]
        assert summary["mean"][metric]["mean"] == pytest.approx(np.mean(values))
        assert summary["mean"][metric]["sd"] == pytest.approx(np.std(values, ddof=1))
        assert summary["mean"][metric]["by_seed"] == {"0": values[0], "1": values[1]}
    assert summary["mean"]["num_classes_averaged"] == {"0": reports[0]["mean"]["num_classes_averaged"],
                                                       "1": reports[1]["mean"]["num_classes_averaged"]}
    for entry in summary["classes"]:
        values = [next(c for c in r["classes"] if c["class"] == entry["class"])["auroc"] for r in reports]
        defined = [v for v in values if v is not None]
        if defined:
            assert entry["auroc"]["mean"] == pytest.approx(np.mean(defined)), entry["class"]
    markdown = (out / "seeds.md").read_text()
    assert markdown in result.output + "\n" or markdown.strip() in result.output
    assert "**Mean**" in markdown and str(out / "seeds.md") in result.output
