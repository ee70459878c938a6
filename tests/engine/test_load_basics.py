"""Load-test basics the peer tools have (issue 29, Deliver 1): a fixed output length (ignore_eos,
in process and over HTTP), extra request fields for a server, data sets without answers, the
server telemetry poll period, a tokenizer exported without weights, and closed-loop cells that
report no arrival process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import THREADS, chat, drain, run_cli
from rllm_study.analysis.metrics import cell_metrics
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
from rllm_study.backends.openai_http.engine import OpenAIEngine
from rllm_study.backends.options import LlamaCppOptions, OpenAIOptions, OptionError
from rllm_study.bench.server import free_port
from rllm_study.running.results import CellWriter, find_cells, read_cell


def test_option_checks():
    assert OpenAIOptions(extra_body='{"ignore_eos": true}').extra_body
    for bad in ("[1, 2]", '{"a": ', '"text"'):
        with pytest.raises(OptionError, match="JSON object"):
            OpenAIOptions(extra_body=bad)
    with pytest.raises(OptionError, match=">= 0"):
        OpenAIOptions(telemetry_period_s=-1.0)
    assert OpenAIOptions(telemetry_period_s=0).telemetry_period_s == 0


def _engine(kind: str, **options) -> OpenAIEngine:
    """An engine whose probe found no server; `_server` is set to what a probe of `kind` learns."""
    eng = OpenAIEngine("m", OpenAIOptions(base_url=f"http://127.0.0.1:{free_port()}", **options))
    eng._server = {"kind": kind, "models": ["m"], "props": {}}
    return eng


@pytest.mark.parametrize(
    "kind,sent",
    [
        ("llama-server", True),
        ("vllm", True),
        ("sglang", True),
        ("llama_cpp.server", False),
        ("openai-compatible", False),
    ],
)
def test_ignore_eos_goes_to_servers_that_take_it(kind, sent):
    eng = _engine(kind, ignore_eos=True)
    body = eng._body(Request("r", "hi", SamplingParams(16)))
    notes = eng.info().unsupported_options
    eng.close()
    assert body.get("ignore_eos") is (True if sent else None)
    assert any("ignore_eos" in n for n in notes) is not sent


def test_extra_body_is_merged_last():
    eng = _engine(
        "vllm", extra_body='{"ignore_eos": true, "max_tokens": 7, "chat_template_kwargs": {"enable_thinking": false}}'
    )
    body = eng._body(Request("r", "hi", SamplingParams(16)))
    eng.close()
    assert (body["ignore_eos"], body["max_tokens"], body["chat_template_kwargs"]) == (
        True,
        7,
        {"enable_thinking": False},
    )
    assert body["stream"] is True  # our own fields stay where the extra body does not name them


def test_ignore_eos_in_process_runs_to_max_tokens(smollm2_path):
    """SmolLM2 ends "Reply with one word: yes." after a few tokens; with ignore_eos the same
    request runs to exactly max_tokens and finishes by length, its end token left out of the text."""
    outs = {}
    for ignore in (False, True):
        engine = LlamaCppEngine(
            str(smollm2_path), LlamaCppOptions(max_seqs=1, ctx_per_seq=256, n_threads=THREADS, ignore_eos=ignore)
        )
        engine.submit(Request("r", chat(engine, "Reply with one word: yes."), SamplingParams(max_tokens=40)))
        outs[ignore] = drain(engine)["r"]["finish"]
        engine.close()
    assert outs[False].reason == "stop" and outs[False].output_tokens < 40
    assert outs[True].reason == "length" and outs[True].output_tokens == 40
    assert "<|im_end|>" not in outs[True].output_text
    assert outs[True].output_text.startswith(outs[False].output_text)  # greedy: the same start


def test_telemetry_poll_off_reads_nothing():
    """With telemetry_period_s 0 no poller starts, so the server sees only the requests."""
    eng = _engine("llama-server", telemetry_period_s=0)
    eng._start_poller()
    assert eng._poller is None
    eng.close()
    on = _engine("llama-server", telemetry_period_s=0.05)
    on._loop.call_soon_threadsafe(on._start_poller)
    time.sleep(0.1)
    assert on._poller is not None
    on.close()


def test_spec_takes_the_new_engine_keys(tmp_path):
    from rllm_study.running.spec import expand

    spec = tmp_path / "spec.toml"
    spec.write_text("")
    (cell,) = expand(
        {
            "models": ["m"],
            "backend": "openai",
            "datasets": {"gsm8k": 1},
            "engine": {
                "base_url": "http://127.0.0.1:1",
                "ignore_eos": True,
                "telemetry_period_s": 0.5,
                "extra_body": '{"top_k": 5}',
            },
        },
        str(spec),
    )
    assert (cell.engine.ignore_eos, cell.engine.telemetry_period_s, cell.engine.extra_body) == (
        True,
        0.5,
        '{"top_k": 5}',
    )


def test_data_set_without_answers_runs_ungraded(tmp_path, smollm2_path):
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ("Say hi.", "Count to 3."))
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "load"\nmodels = ["smollm2-135m"]\nprompt_modes = ["direct"]\nmax_tokens = [6]\n'
        'datasets = { load = { path = "prompts.jsonl", n = 2, answer = "none" } }\n'
        "[engine]\nignore_eos = true\n[workload]\nbatch_size = 2\n"
    )
    proc = run_cli("run", spec, "-t", str(THREADS), "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "no reference answers" in proc.stdout + proc.stderr
    (cell_dir,) = find_cells([tmp_path / "out"])
    cell = read_cell(cell_dir)
    assert len(cell.requests) == 2
    for r in cell.requests:
        assert (r["correct"], r["parse_status"], r["reference_answer"]) == (None, None, "")
        assert (r["output_tokens"], r["finish_reason"]) == (6, "length")  # ignore_eos from the spec's [engine]
    acc = cell_metrics(cell)["accuracy"]["overall"]
    assert acc["accuracy"] is None and acc["ci95"] is None


def _closed_cell(tmp_path: Path, arrival: str):
    w = CellWriter(tmp_path / arrival)
    w.write_manifest({"cell": {"name": arrival, "workload": {"arrival": arrival, "concurrency": 2, "rate": 1.0}}})
    for i, t in enumerate((0.0, 0.0, 1.0, 1.2, 3.0)):
        w.write_request(
            {
                "id": f"r{i}",
                "arrival_s": t,
                "admitted_s": t,
                "first_token_s": t + 0.1,
                "finish_s": t + 1,
                "output_tokens": 4,
                "think_tokens": 0,
                "answer_tokens": 4,
                "finish_reason": "stop",
            },
            {"id": f"r{i}", "t_s": [t + 0.1 * k for k in range(1, 5)], "phase": "aaaa"},
        )
    w.close()
    return read_cell(tmp_path / arrival)


def test_closed_loop_reports_no_arrival_process(tmp_path):
    closed = cell_metrics(_closed_cell(tmp_path, "closed"))
    assert closed["arrivals"]["rate"] is None and closed["arrivals"]["cv"] is None
    # its request rate is the completed requests per second: 5 requests from the first arrival (0 s) to the last finish (4 s)
    assert closed["throughput"]["requests_s"] == pytest.approx(5 / 4.0)
    open_loop = cell_metrics(_closed_cell(tmp_path, "poisson"))
    assert open_loop["arrivals"]["rate"] == pytest.approx(4 / 3.0)


def test_tokenizer_export_without_weights(tmp_path, smollm2_path):
    proc = run_cli("models", "convert", "smollm2-135m", "--to", "tokenizer", "--out", tmp_path / "tok")
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert files == ["tokenizer.json", "tokenizer_config.json"]
    assert sum(p.stat().st_size for p in (tmp_path / "tok").iterdir()) < 10 * 2**20
    import llama_cpp
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    llm = llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)
    text = "The answer is 42, isn't it?\n  def f(x): return x**2"
    assert tok.encode(text, add_special_tokens=False).ids == llm.tokenize(text.encode(), add_bos=False, special=False)
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.mlx
def test_ignore_eos_in_process_on_mlx(smollm2_path):
    from conftest import require_module

    require_module("mlx_lm")
    from rllm_study.backends.mlx.convert import convert_gguf
    from rllm_study.backends.mlx.engine import MlxEngine
    from rllm_study.backends.options import MlxOptions

    folder = convert_gguf(smollm2_path)
    outs = {}
    for ignore in (False, True):
        engine = MlxEngine(str(folder), MlxOptions(max_seqs=1, ctx_per_seq=256, ignore_eos=ignore))
        engine.submit(Request("r", chat(engine, "What is 2+2?"), SamplingParams(max_tokens=48)))
        outs[ignore] = drain(engine)["r"]["finish"]
        engine.close()
    assert outs[False].reason == "stop" and outs[False].output_tokens < 48
    assert outs[True].reason == "length" and outs[True].output_tokens == 48
    assert outs[True].output_text.startswith(outs[False].output_text)
