"""Safe expansion of kerchunk v1 ``templates`` and ``gen`` entries.

Templates are plain substitution: ``{{name}}`` is replaced by the template's
text. ``gen`` fields may also hold a small arithmetic expression over the
dimension variables (``{{(i + 1) * 1000}}``, ``{{ "%03d" % i }}``). Expressions
are parsed with :mod:`ast` and evaluated by walking an allow-list of node
types; nothing is ever passed to ``eval`` or a template engine, so a manifest
cannot run code.
"""

from __future__ import annotations

import ast
import itertools
import operator
import re
from collections.abc import Iterator, Mapping
from typing import Any

from refstore.errors import TemplateError

_PLACEHOLDER = re.compile(r"{{(.*?)}}", re.DOTALL)
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")

_BINOPS: dict[type[ast.operator], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Any] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_POWER = 64


def _eval_node(node: ast.AST, names: Mapping[str, Any], where: str) -> Any:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, names, where)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise TemplateError(f"{where}: unknown template variable {node.id!r}")
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _eval_node(node.left, names, where)
        right = _eval_node(node.right, names, where)
        if isinstance(node.op, ast.Pow) and (not isinstance(right, int) or right > _MAX_POWER):
            raise TemplateError(f"{where}: exponent {right!r} is too large")
        if (isinstance(left, str) or isinstance(right, str)) and not isinstance(node.op, (ast.Add, ast.Mod)):
            raise TemplateError(f"{where}: only + and % apply to text")
        try:
            return _BINOPS[type(node.op)](left, right)
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise TemplateError(f"{where}: {exc}") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand, names, where))
    if isinstance(node, ast.Tuple):
        return tuple(_eval_node(e, names, where) for e in node.elts)
    raise TemplateError(
        f"{where}: unsupported template expression {ast.dump(node)[:80]!r}; "
        "only names, numbers, strings and + - * / // % ** are allowed"
    )


def render(text: str, names: Mapping[str, Any], where: str, *, expressions: bool) -> str:
    """Replace every ``{{...}}`` in *text*.

    Parameters
    ----------
    text
        The template text.
    names
        Values for the names a placeholder may use.
    where
        Names the manifest entry, for error messages.
    expressions
        If False only ``{{name}}`` placeholders are allowed (the form used in
        ``refs`` URLs); if True the arithmetic subset is evaluated as well.

    Raises
    ------
    TemplateError
        For an unknown name or a disallowed expression.
    """
    if "{{" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        inner = match.group(1)
        simple = _NAME.fullmatch(inner)
        if simple is not None:
            name = simple.group(1)
            if name not in names:
                raise TemplateError(f"{where}: unknown template {name!r} in {text!r}")
            return str(names[name])
        if not expressions:
            raise TemplateError(
                f"{where}: template placeholder {{{{{inner}}}}} in {text!r} is not a plain name"
            )
        try:
            tree = ast.parse(inner.strip(), mode="eval")
        except SyntaxError:
            raise TemplateError(f"{where}: cannot parse expression {inner!r}") from None
        return str(_eval_node(tree, names, where))

    return _PLACEHOLDER.sub(substitute, text)


def resolve_templates(
    templates: Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> dict[str, str]:
    """Merge the manifest's templates with *overrides* (without mutating either).

    Template values may refer to other templates with ``{{name}}``.
    """
    merged = {**templates, **(overrides or {})}
    out: dict[str, str] = {}
    for name, value in merged.items():
        if not isinstance(value, str):
            raise TemplateError(f"template {name!r}: value must be text, got {type(value).__name__}")
        out[name] = value
    # one extra pass lets templates refer to earlier templates; cycles stay unexpanded
    return {name: render(v, out, f"template {name!r}", expressions=False) if "{{" in v else v
            for name, v in out.items()}


def _dimension_values(name: str, spec: Any, where: str) -> list[Any]:
    if isinstance(spec, list):
        return spec
    if isinstance(spec, Mapping):
        try:
            return list(range(int(spec.get("start", 0)), int(spec["stop"]), int(spec.get("step", 1))))
        except (KeyError, TypeError, ValueError) as exc:
            raise TemplateError(f"{where}: dimension {name!r} needs integer start/stop/step ({exc})") from None
    raise TemplateError(f"{where}: dimension {name!r} must be a list or a {{start, stop, step}} object")


def expand_gen(
    gens: list[Any], templates: Mapping[str, str]
) -> Iterator[tuple[str, str, int | None, int | None]]:
    """Yield ``(key, url, offset, length)`` for every entry the ``gen`` list describes.

    ``offset`` and ``length`` are None for a whole-object reference.

    Raises
    ------
    TemplateError
        If an entry lacks ``key``/``url``/``dimensions``, gives only one of
        offset and length, or uses a disallowed expression.
    """
    for n, gen in enumerate(gens):
        where = f"gen[{n}]"
        if not isinstance(gen, Mapping) or "key" not in gen or "url" not in gen:
            raise TemplateError(f"{where}: each gen entry needs 'key', 'url' and 'dimensions'")
        if ("offset" in gen) != ("length" in gen):
            raise TemplateError(f"{where}: give both 'offset' and 'length', or neither")
        dims = gen.get("dimensions") or {}
        if not isinstance(dims, Mapping):
            raise TemplateError(f"{where}: 'dimensions' must be an object")
        names = list(dims)
        values = [_dimension_values(d, dims[d], where) for d in names]
        has_range = "offset" in gen
        for combo in itertools.product(*values):
            env = {**templates, **dict(zip(names, combo))}
            key = render(str(gen["key"]), env, where, expressions=True)
            url = render(str(gen["url"]), env, where, expressions=True)
            if has_range:
                try:
                    offset = int(render(str(gen["offset"]), env, where, expressions=True))
                    length = int(render(str(gen["length"]), env, where, expressions=True))
                except ValueError as exc:
                    raise TemplateError(f"{where}: offset/length is not an integer ({exc})") from None
                yield key, url, offset, length
            else:
                yield key, url, None, None
