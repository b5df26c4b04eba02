"""Forms generated from the config schema: every key with its type, choices, default and help.

`form_fields(sections)` turns the schema's sections (config/schema.py) into `FieldSpec`s; a key
added to the schema appears in the board without UI code. A key's help may start with the
stages or methods it is for ("lora: ...", "dpo/kto: ...", "grpo regex_match: ..."): the board
shows it only when the form's stage and finetuning_type match (`visible`).

`to_settings` turns the form's values back into the flat YAML mapping, keeping only what
differs from the schema's defaults (plus the keys a tab always writes), so the saved YAML is
the short one a person would write. `build_components` (Gradio) is kept apart from the pure
functions so they are tested without a browser.
"""

from __future__ import annotations

import re
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any

import yaml

from lmforge.config.schema import FINETUNING_TYPES, SECTIONS, STAGES

# Sections shown open; the others are folded ("advanced").
OPEN_SECTIONS = ("model", "method", "data", "train")
COLUMNS = 3  # fields per row
# Keys that always go into the YAML of a training run, even at their default.
ALWAYS_WRITTEN = ("model_name_or_path", "stage", "finetuning_type", "dataset", "output_dir")
_TAG_RE = re.compile(r"^([a-z0-9_]+(?:/[a-z0-9_]+)*)[ :]")
_TAGS = set(STAGES) | set(FINETUNING_TYPES)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    section: str
    kind: str  # bool, optional_bool, int, float, text, choice, mapping
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is allowed (an empty box)
    path: bool = False
    numeric: bool = False  # a number key shown as text (it also takes words: val_size: auto)
    stages: tuple[str, ...] = ()  # shown only for these stages (empty: all)
    methods: tuple[str, ...] = ()  # shown only for these finetuning types (empty: all)

    @property
    def label(self) -> str:
        return self.name

    def visible(self, stage: str, method: str) -> bool:
        return (not self.stages or stage in self.stages) and (
            not self.methods or method in self.methods
        )


def _kind(hint, metadata: dict, default) -> tuple[str, bool]:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    origin = typing.get_origin(base) or base
    if metadata.get("choices"):
        return "choice", optional
    if origin is bool:
        return ("optional_bool" if optional else "bool"), optional
    if origin is dict or origin is list:
        return "mapping", optional
    bounds = metadata.get("bounds")
    # An optional number (default None) is a text box: an empty Number field reads as 0.
    if origin in (int, float) and not (bounds and bounds.words) and default is not None:
        return origin.__name__, optional
    return "text", optional


def _is_number_hint(hint) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return any(a in (int, float) for a in args)


def _tags(help_text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    match = _TAG_RE.match(help_text)
    words = match.group(1).split("/") if match else []
    if not words or not set(words) <= _TAGS | {"simpo"}:
        return (), ()
    words = ["dpo" if w == "simpo" else w for w in words]
    return (
        tuple(w for w in words if w in STAGES),
        tuple(w for w in words if w in FINETUNING_TYPES),
    )


def form_fields(sections: typing.Iterable[str] | None = None) -> list[FieldSpec]:
    """The fields of the named schema sections (all of them by default), in schema order."""
    specs = []
    for section in sections or SECTIONS:
        cls = SECTIONS.get(section)
        if cls is None:  # a section a newer lmforge adds (synth): nothing to show here yet
            continue
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = f.default
            if default is MISSING:
                default = f.default_factory() if f.default_factory is not MISSING else None
            kind, optional = _kind(hints[f.name], f.metadata, default)
            stages, methods = _tags(f.metadata.get("help", ""))
            if not methods and f.name.startswith("lora_"):  # lora_rank, lora_alpha, ...
                methods = ("lora",)
            specs.append(
                FieldSpec(
                    name=f.name,
                    section=section,
                    kind=kind,
                    default=default,
                    help=_help(f.metadata),
                    choices=tuple(f.metadata.get("choices") or ()),
                    optional=optional,
                    path=bool(f.metadata.get("path")),
                    numeric=kind == "text" and _is_number_hint(hints[f.name]),
                    stages=stages,
                    methods=methods,
                )
            )
    return specs


def _help(metadata: dict) -> str:
    text = metadata.get("help", "")
    if metadata.get("bounds"):
        text += f" Allowed: {metadata['bounds'].describe()}."
    return text


def section_doc(section: str) -> str:
    cls = SECTIONS.get(section)
    return (cls.__doc__ or "").strip().splitlines()[0] if cls else ""


# -- values <-> settings ---------------------------------------------------------------------


def widget_value(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget shows it."""
    if spec.kind == "bool":
        return bool(value)
    if spec.kind == "optional_bool":
        return "null" if value is None else ("true" if value else "false")
    if spec.kind == "choice":
        return "" if value is None else str(value)
    if spec.kind in ("int", "float"):
        return value
    if spec.kind == "mapping":
        return "" if not value else yaml.safe_dump(value, sort_keys=False).strip()
    if spec.name == "dataset":  # a multi-select
        return [n.strip() for n in str(value or "").split(",") if n.strip()]
    return "" if value is None else str(value)


def config_value(spec: FieldSpec, value: Any) -> Any:
    """A widget's value as the config value (the inverse of `widget_value`)."""
    if spec.kind == "bool":
        return bool(value)
    if spec.kind == "optional_bool":
        return {"true": True, "false": False}.get(str(value), None)
    if spec.kind == "choice":
        return value or None
    if spec.kind in ("int", "float"):
        if value is None or value == "":
            return None
        number = float(value)
        return int(number) if spec.kind == "int" and number.is_integer() else number
    if spec.kind == "mapping":
        text = (value or "").strip()
        return yaml.safe_load(text) if text else None
    if isinstance(value, list):
        return ",".join(value) or None
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    return _number_or_text(text) if spec.numeric else text


def _number_or_text(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def to_settings(
    specs: list[FieldSpec], values: list[Any], always: typing.Iterable[str] = ALWAYS_WRITTEN
) -> dict[str, Any]:
    """The flat YAML mapping: keys whose value differs from the default, plus `always` keys
    that have a value. Keys hidden for the form's stage and method are left out."""
    by_name = {s.name: config_value(s, v) for s, v in zip(specs, values)}
    stage = by_name.get("stage") or "sft"
    method = by_name.get("finetuning_type") or "lora"
    always = set(always)
    settings = {}
    for spec in specs:
        value = by_name[spec.name]
        if not spec.visible(stage, method):
            continue
        if value == spec.default and not (spec.name in always and value is not None):
            continue
        if value is None and spec.default is None:
            continue
        settings[spec.name] = value
    return settings


def from_settings(specs: list[FieldSpec], settings: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Widget values for a loaded YAML mapping (defaults for keys it lacks), and the keys of the
    mapping that this form has no field for."""
    values = [widget_value(s, settings.get(s.name, s.default)) for s in specs]
    known = {s.name for s in specs}
    return values, [k for k in settings if k not in known]


def settings_yaml(settings: dict[str, Any]) -> str:
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)


# -- Gradio ---------------------------------------------------------------------------------


def build_component(gr, spec: FieldSpec, value: Any = MISSING, *, choices=None, prefix="field"):
    """One Gradio component for `spec`, labelled with the key and its help as the info line."""
    shown = widget_value(spec, spec.default if value is MISSING else value)
    common = dict(label=spec.label, info=spec.help, elem_id=f"{prefix}-{spec.name}")
    if spec.kind == "bool":
        return gr.Checkbox(value=shown, **common)
    if spec.kind == "optional_bool":
        return gr.Dropdown(["true", "false", "null"], value=shown, **common)
    if spec.kind == "choice":
        options = ([""] if spec.optional else []) + list(spec.choices)
        return gr.Dropdown(options, value=shown, **common)
    if spec.kind in ("int", "float"):
        return gr.Number(value=shown, precision=0 if spec.kind == "int" else None, **common)
    if spec.kind == "mapping":
        return gr.Code(value=shown, language="yaml", label=spec.label, elem_id=common["elem_id"])
    if choices is not None:  # a catalogue or dataset_info.json picker
        multi = spec.name == "dataset"
        return gr.Dropdown(
            choices,
            value=shown,
            multiselect=multi,
            allow_custom_value=True,
            **common,
        )
    return gr.Textbox(value=shown, **common)


def build_components(
    gr,
    specs: list[FieldSpec],
    *,
    pickers: dict | None = None,
    values=None,
    prefix="field",
    open_sections=OPEN_SECTIONS,
):
    """Accordions per section (OPEN_SECTIONS open, the rest folded), one component per spec;
    returns {name: component} in spec order. `pickers` gives choices for keys such as
    model_name_or_path and dataset; `values` initial values by name."""
    pickers, values = pickers or {}, values or {}
    components: dict[str, Any] = {}
    order = list(dict.fromkeys(s.section for s in specs))
    for section in order:
        folded = section not in open_sections
        title = f"{section}: {section_doc(section)}" + (" (advanced)" if folded else "")
        with gr.Accordion(title, open=not folded, elem_id=f"{prefix}-section-{section}"):
            mine = [s for s in specs if s.section == section]
            for start in range(0, len(mine), COLUMNS):
                with gr.Row():
                    for spec in mine[start : start + COLUMNS]:
                        components[spec.name] = _component(gr, spec, values, pickers, prefix)
    return components


def _component(gr, spec: FieldSpec, values: dict, pickers: dict, prefix: str):
    value = values.get(spec.name, MISSING)
    return build_component(gr, spec, value, choices=pickers.get(spec.name), prefix=prefix)
