"""The three forms a model (an event or a request) can take, and what each
needs from the codec: attrs classes (the default and the fast path),
dataclasses as diator declares them, and pydantic v2 models.

attrs classes and dataclasses are written by reading their fields and built
by msgspec, which decodes both natively and strictly. A pydantic model is
written by its own ``model_dump`` and validated by pydantic itself. Nothing
here imports pydantic: a class is a pydantic model when it carries pydantic's
validator, which only a program that imported pydantic can define.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import msgspec

from mediator._exceptions import ModelBuildError
from mediator._limits import quote

__all__ = [
    "Form",
    "ModelBuildError",
    "build",
    "fields_of",
    "form_of",
    "jsonable",
    "pydantic_problem",
    "validate_pydantic_json",
]

Form = Literal["attrs", "dataclass", "pydantic", "other"]

_FORMS: dict[type[Any], Form] = {}
_WRITERS: dict[type[Any], Callable[[Any], dict[str, Any]]] = {}


def form_of(cls: type[Any]) -> Form:
    """Which of the three forms `cls` is ("other" for none of them)."""
    form = _FORMS.get(cls)
    if form is None:
        if _is_pydantic(cls):
            form = "pydantic"
        elif dataclasses.is_dataclass(cls):
            form = "dataclass"
        elif attrs.has(cls):
            form = "attrs"
        else:
            form = "other"
        _FORMS[cls] = form
    return form


def _is_pydantic(cls: type[Any]) -> bool:
    # A pydantic model subclassing an attrs event kind is attrs.has() too:
    # pydantic is asked first.
    return "pydantic" in sys.modules and callable(getattr(cls, "model_validate_json", None))


def _writer(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    form = form_of(cls)
    if form == "pydantic":

        def write_model(obj: Any) -> dict[str, Any]:
            # Python mode: orjson writes the values, as for the other forms
            # (datetimes with "+00:00"); aliases, as validation reads them.
            return obj.model_dump(mode="python", by_alias=True)  # type: ignore[no-any-return]

        return write_model
    if form == "dataclass":
        names = tuple(field.name for field in dataclasses.fields(cls))
    elif form == "attrs":
        names = tuple(field.name for field in attrs.fields(cls))
    else:
        raise TypeError(
            f"cannot serialize {cls.__qualname__}: an event is an attrs class, a dataclass "
            "or a pydantic model"
        )

    def write(obj: Any) -> dict[str, Any]:
        return {name: getattr(obj, name) for name in names}

    return write


def fields_of(obj: Any) -> dict[str, Any]:
    """The field values of an attrs, dataclass or pydantic instance, by name,
    as the payload of its envelope."""
    cls = type(obj)
    write = _WRITERS.get(cls)
    if write is None:
        write = _WRITERS[cls] = _writer(cls)
    return write(obj)


def jsonable(obj: Any) -> Any:
    """What orjson writes for a value it cannot write itself, inside a
    payload: a nested model as its fields, a set as a list, and any other
    type pydantic knows how to write (Decimal, Path, ...) when pydantic is
    in use. Raises TypeError for anything else."""
    cls = type(obj)
    if form_of(cls) != "other":
        return fields_of(obj)
    if isinstance(obj, frozenset | set):
        return list(obj)
    core = sys.modules.get("pydantic_core")
    if core is not None:
        try:
            return core.to_jsonable_python(obj)
        except Exception:
            pass
    raise TypeError(f"cannot serialize {cls.__qualname__} in an event payload")


def _problem_location(location: tuple[int | str, ...]) -> str:
    path = "$"
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def pydantic_problem(exc: Any) -> str:
    """A pydantic ValidationError as one line in msgspec's words: what was
    wrong and where (``Input should be a valid integer - at `$.user_id` ``),
    with how many more problems there are."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return quote(str(exc))
    first = errors[0]
    text = f"{first['msg']} - at `{_problem_location(tuple(first['loc']))}`"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return quote(text)


def validate_pydantic_json(cls: type[Any], data: bytes) -> Any:
    """`data` (a JSON object) validated into the pydantic model `cls`:
    strictly (no "5" for 5), unless the model's own config sets `strict`."""
    strict = None if "strict" in cls.model_config else True
    return cls.model_validate_json(data, strict=strict)


def build(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """An instance of the model `cls` from its field values (Python objects),
    checked as a decode checks them: attrs classes and dataclasses by
    msgspec (no coercion; objects with attributes read as nested models),
    pydantic models by pydantic. Raises ModelBuildError naming the field."""
    form = form_of(cls)
    if form == "pydantic":
        pydantic = sys.modules["pydantic"]
        try:
            return cls.model_validate(dict(values))
        except pydantic.ValidationError as exc:
            raise ModelBuildError(pydantic_problem(exc)) from None
    if form == "other":
        raise ModelBuildError(
            f"{cls.__qualname__} is not an attrs class, a dataclass or a pydantic model"
        )
    try:
        return msgspec.convert(dict(values), cls, from_attributes=True)
    except msgspec.ValidationError as exc:
        raise ModelBuildError(quote(str(exc))) from None
