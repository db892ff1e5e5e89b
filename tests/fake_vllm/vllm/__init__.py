"""A test double of vLLM's offline interface, as documented for the version the project's vLLM environment pins
(0.33): `LLM(model, **engine args)`, `LLM.get_tokenizer()`, `LLM.generate(prompts, sampling_params, use_tqdm=...)`,
`SamplingParams` and `sampling_params.StructuredOutputsParams`. It loads no weights. Each request's continuation is the
text in the model directory's `fake_vllm_script.json` ({"text": ...}, special tokens written out; `{n}` is replaced by
a number drawn from the prompt ids and the request seed), tokenised with the model's tokenizer; the engine then ends it
as vLLM documents: at a stop token id or the model's eos (kept in `token_ids`, not in `text`), before a stop string, or
at `max_tokens` (a script that ends first ends as "length": the model would go on). Text prompts are tokenised with
special tokens, as vLLM does. Every engine and request is appended to the JSONL file named by FAKE_VLLM_LOG;
FAKE_VLLM_CRASH_AFTER=k ends the process after k generate calls."""
import json
import os
import zlib
from dataclasses import asdict
from pathlib import Path

from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams, StructuredOutputsParams

__version__ = "0.33.0"
__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "RequestOutput", "CompletionOutput"]

# LLM's own keyword arguments and the EngineArgs fields the project may pass; anything else is a TypeError, as in vLLM
_ENGINE_ARGS = {"tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code", "tensor_parallel_size",
                "dtype", "quantization", "revision", "tokenizer_revision", "seed", "gpu_memory_utilization",
                "swap_space", "cpu_offload_gb", "enforce_eager", "max_model_len", "generation_config",
                "max_num_seqs", "data_parallel_size", "pipeline_parallel_size", "enable_prefix_caching"}


def _log(event: dict) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f: f.write(json.dumps({"pid": os.getpid(), **event}) + "\n")


class LLM:
    def __init__(self, model: str, **kwargs):
        unknown = set(kwargs) - _ENGINE_ARGS
        if unknown: raise TypeError(f"LLM got unexpected keyword arguments {sorted(unknown)}")
        from transformers import AutoTokenizer, GenerationConfig
        self.model, self.kwargs = model, kwargs
        name = kwargs.get("tokenizer") or model
        self._tok = AutoTokenizer.from_pretrained(name, revision=kwargs.get("tokenizer_revision"))
        try:
            eos = GenerationConfig.from_pretrained(model, revision=kwargs.get("revision")).eos_token_id
        except OSError:
            eos = None
        self._eos = {self._tok.eos_token_id} | set([eos] if isinstance(eos, int) else (eos or []))
        script = Path(model) / "fake_vllm_script.json"
        self._script = json.loads(script.read_text())["text"] if script.is_file() else "answer {n}"
        self._calls = 0
        _log({"event": "engine", "model": model, "kwargs": kwargs,
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})

    def get_tokenizer(self):
        return self._tok

    def _complete(self, ids: list[int], sp: SamplingParams) -> CompletionOutput:
        limit = self.kwargs.get("max_model_len")
        if limit and len(ids) > limit:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                             f"of {limit}")
        n = zlib.crc32(json.dumps([ids, sp.seed]).encode()) % 1000
        script = self._tok(self._script.replace("{n}", str(n)), add_special_tokens=False)["input_ids"]
        out, reason, stop_reason = [], "length", None
        for t in script:
            if len(out) == sp.max_tokens: break
            out.append(t)
            if t in (sp.stop_token_ids or []) or (not sp.ignore_eos and t in self._eos):
                reason, stop_reason = "stop", t; break
        body = out[:-1] if stop_reason is not None else out
        text = self._tok.decode(body, skip_special_tokens=sp.skip_special_tokens)
        stops = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
        cuts = [(text.find(s), s) for s in stops if s in text]
        if cuts:
            at, s = min(cuts)
            text, reason, stop_reason = text[:at + (len(s) if sp.include_stop_str_in_output else 0)], "stop", s
        return CompletionOutput(index=0, text=text, token_ids=out, finish_reason=reason, stop_reason=stop_reason)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None):
        self._calls += 1
        crash = os.environ.get("FAKE_VLLM_CRASH_AFTER")
        if crash and self._calls > int(crash): os._exit(17)          # a worker killed mid-run
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        params = sampling_params if isinstance(sampling_params, list) else \
            [sampling_params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts): raise ValueError("The lengths of prompts and sampling_params must be the same.")
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, params)):
            ids = list(p["prompt_token_ids"]) if isinstance(p, dict) else self._tok(p)["input_ids"]
            _log({"event": "request", "prompt_token_ids": ids, "params": asdict(sp)})
            outs.append(RequestOutput(request_id=str(i), prompt=p if isinstance(p, str) else None,
                                      prompt_token_ids=ids, outputs=[self._complete(ids, sp)], finished=True))
        return outs
