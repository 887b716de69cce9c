"""What every config section is: a strict pydantic model whose canonical JSON, less the fields
marked `NOT_HASHED`, is what a stage's config hash covers (`hashed_dump`); the `Uri` field type,
which refuses credentials; and the error a section raises for a key inside a mapping."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict

# Fields that say where or how fast a stage runs, not what it produces (the output is the same
# for any value): they are left out of the config hash, so moving a run to another Spark master
# or more threads does not redo it.
NOT_HASHED: dict[str, Any] = {"hashed": False}


def hashed_dump(model: Any) -> Any:
    """A section's hashed content: its fields less the `NOT_HASHED` ones, subsections alike."""
    if not isinstance(model, BaseModel):
        return json.loads(json.dumps(model, default=str))
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("hashed") is False:
            continue
        value = getattr(model, name)
        out[name] = hashed_dump(value) if isinstance(value, BaseModel) else value
    for name, value in sorted((model.model_extra or {}).items()):  # FiltersConfig's entries
        out[name] = hashed_dump(value) if isinstance(value, BaseModel) else value
    return json.loads(
        json.dumps(out, default=lambda o: o.model_dump(mode="json") if isinstance(o, BaseModel) else str(o))
    )


# The user-info part of a URI (`s3://USER:SECRET@bucket/...`) is where people paste credentials;
# a URI with one is refused at load, without echoing it, so no URI that is printed, logged, stored
# or tracked later can hold a secret. The publisher's own check says the same.
CREDENTIALS_IN_URI = "must not contain credentials; credentials come from the AWS environment"


def _has_user_info(uri: str) -> bool:
    return "://" in uri and "@" in urlparse(uri).netloc


def _no_credentials(value: Any) -> Any:
    """The one URI validator: refuse user-info in a URI (or in any URI of a list)."""
    for uri in [value] if isinstance(value, str) else (value or []):
        if isinstance(uri, str) and _has_user_info(uri):
            raise ValueError(CREDENTIALS_IN_URI)
    return value


Uri = Annotated[str, AfterValidator(_no_credentials)]


class Section(BaseModel):
    """A config section: an unknown key is an error, and so is an invalid assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NestedConfigError(ValueError):
    """A validation error inside a mapping whose keys are not fields (`curate.filters.<name>`):
    `key` is the dotted path below the mapping, so the message names the whole key."""

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key, self.msg = key, msg
