"""The tokenizer folder of a ClimbMix dataset (`tokenizer/`): what trainers read without arguments.

ClimbLab keeps one Hugging Face `tokenizer.json` (`mixture.climblab.tokens`). A trainer needs to
know which token ends a document and which one pads, and finds that in files beside it:

- Hugging Face `AutoTokenizer.from_pretrained("tokenizer")` reads `tokenizer_config.json` and
  `special_tokens_map.json`; without them its `eos_token`, `bos_token` and `pad_token` are None;
- Megatron-Core's `MegatronTokenizer.from_pretrained("tokenizer")` reads
  `tokenizer_metadata.json` (the library: `huggingface`, and the model type: `gpt`), loads the
  folder with `AutoTokenizer` and takes its end-of-document (`eod`) and `pad` ids from it; with
  eod None its GPTDataset cannot be built.

The build copies `tokenizer.json` and writes the three files (`folder_files`, a pure function of
the tokenizer and its end-of-document id): the end-of-document token is the eos token, and the
bos token too (GPT-2's convention; the documents carry no BOS, none is added when encoding);
the pad token is `<|pad|>` when the vocabulary has it (ClimbLab's trained tokenizer does), else
the end-of-document token.
"""

from __future__ import annotations

import json

from mixture import storage
from mixture.climblab import TOKENIZER, ClimbLab

FOLDER = TOKENIZER.rsplit("/", 1)[0]
PAD = "<|pad|>"


def special_tokens(tokenizer_json: str, eos_id: int) -> dict[str, str]:
    """{eos_token, bos_token, pad_token} of a tokenizer (its JSON) whose end-of-document id is `eos_id`."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    eos = tok.id_to_token(eos_id)
    if eos is None:
        raise ValueError(f"the tokenizer has no token with the end-of-document id {eos_id}")
    pad = PAD if tok.token_to_id(PAD) is not None else eos
    return {"eos_token": eos, "bos_token": eos, "pad_token": pad}


def folder_files(tokenizer_json: str, eos_id: int) -> dict[str, str]:
    """The folder's files besides `tokenizer.json`: relative path -> text."""
    tokens = special_tokens(tokenizer_json, eos_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokens,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    megatron = {"library": "huggingface", "class_name": None, "class_path": None, "model_type": "gpt"}
    megatron["chat_template"] = None
    return {
        f"{FOLDER}/tokenizer_config.json": _json(config),
        f"{FOLDER}/special_tokens_map.json": _json(tokens),
        f"{FOLDER}/tokenizer_metadata.json": _json(megatron),
    }


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write(writer, lab: ClimbLab) -> dict[str, str | int]:
    """Copy the ClimbLab tokenizer into the build's staging folder and write the files beside
    it; the special tokens and the pad id (for the manifest and the card)."""
    raw = storage.read_bytes(lab.tokenizer_path)
    storage.write_bytes(writer.path(TOKENIZER), raw)
    text = raw.decode()
    for rel, content in folder_files(text, lab.eos_id).items():
        storage.write_text(writer.path(rel), content)
    names = special_tokens(text, lab.eos_id)
    pad_id = lab.eos_id if names["pad_token"] == names["eos_token"] else _token_id(text, names["pad_token"])
    return {**names, "pad_id": pad_id}


def _token_id(tokenizer_json: str, token: str) -> int:
    from tokenizers import Tokenizer

    found = Tokenizer.from_str(tokenizer_json).token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no token {token!r}")
    return int(found)
