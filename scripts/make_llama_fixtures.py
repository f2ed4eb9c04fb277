"""Writes tiny random LlamaForCausalLM checkpoints and PyTorch reference values for
crates/alpaca-models/tests/llama_reference.rs.

Run:  ~/.cache/alpaca/venv/bin/python scripts/make_llama_fixtures.py
For each of `llama_tied` and `llama_untied` under crates/alpaca-models/tests/fixtures/ it writes
the model as transformers saves it (config.json, model.safetensors) and reference.json: fixed
input ids (row 1 right-padded), attention mask, labels (-100 on padding and on a "prompt"),
transformers' logits, loss and the gradient norm of every parameter.
"""

import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "crates", "alpaca-models", "tests", "fixtures")


def build(name, tied, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=1e5,
        tie_word_embeddings=tied,
        # Larger than LLaMA's 0.02 so attention is far from uniform and every op matters.
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():
        # Norm weights away from 1 so that their use (and gradient) is tested too.
        for parameter_name, parameter in model.named_parameters():
            if parameter_name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
    out_dir = os.path.join(FIXTURES, name)
    model.save_pretrained(out_dir)

    input_ids = torch.randint(3, 128, (2, 10))
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = 0
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    labels[0, :3] = -100  # a prompt whose tokens are not predicted

    model.train()  # attention_dropout is 0, so train mode only enables gradients
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    output.loss.backward()
    gradient_norms = {n: p.grad.norm().item() for n, p in model.named_parameters()}
    reference = dict(
        transformers=__import__("transformers").__version__,
        torch=torch.__version__,
        input_ids=input_ids.tolist(),
        attention_mask=attention_mask.tolist(),
        labels=labels.tolist(),
        logits=output.logits.detach().tolist(),
        loss=output.loss.item(),
        gradient_norms=gradient_norms,
    )
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f)
    print(f"{name}: loss {output.loss.item():.6f}, {len(gradient_norms)} parameters")


build("llama_tied", tied=True, seed=5)
build("llama_untied", tied=False, seed=6)
