"""Safe expansion of kerchunk v1 ``templates`` and ``gen`` entries.

Templates are plain substitution: ``{{name}}`` is replaced by the template's
text. ``gen`` fields may also hold a small arithmetic expression over the
dimension variables (``{{(i + 1) * 1000}}``, ``{{ "%03d" % i }}``). Expressions
are parsed with :mod:`ast` and evaluated by walking an allow-list of node
types; nothing is ever passed to ``eval`` or a template engine, so a manifest
cannot run code. Every expansion stays within the budgets of
:mod:`._budgets`: keys generated, length of rendered text, expression length
and depth, integer size, ``%`` format widths.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import operator
import re
from collections.abc import Iterator, Mapping
from typing import Any

from refstore.errors import TemplateError
from refstore.manifest._budgets import Budgets, current

_PLACEHOLDER = re.compile(r"{{(.*?)}}", re.DOTALL)
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")


class FunctionTemplate(str):
    """A template whose value has placeholders of its own that name no template (``"f":
    "{{c}}"``): fsspec makes it a jinja function, called as ``{{f(c='text')}}``. refstore
    never runs template code, so using one raises :class:`TemplateError`."""


def _function_template_error(where: str, name: str, value: str) -> TemplateError:
    return TemplateError(
        f"{where}: template {name!r} is a function template ({value[:80]!r}, which fsspec renders "
        "with jinja); refstore never runs template code, so it cannot be used. Write the URLs out "
        "in the manifest (or pass template_overrides={...: plain text})"
    )

#: One ``%`` conversion: its width and precision are groups 1 and 2.
_FORMAT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(?:[a-zA-Z%]|$)")

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
#: Deepest expression tree evaluated (``-(-(-(...)))``); real ones are a few levels deep.
_MAX_DEPTH = 32
_EVAL_ERRORS = (TypeError, ValueError, ZeroDivisionError, OverflowError, MemoryError)


def _bits(value: Any) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _check_value(value: Any, where: str, budget: Budgets) -> Any:
    """*value* if it is within the integer and text budgets, else raise :class:`TemplateError`."""
    if isinstance(value, int) and value.bit_length() > budget.max_int_bits:
        raise TemplateError(
            f"{where}: an integer of more than max_int_bits={budget.max_int_bits} bits (see refstore.manifest.budgets)"
        )
    if isinstance(value, str) and len(value) > budget.max_text_length:
        raise TemplateError(
            f"{where}: text of {len(value)} characters, more than max_text_length={budget.max_text_length}"
        )
    return value


def _check_format(fmt: str, where: str, budget: Budgets) -> None:
    """Refuse ``%`` formats whose width or precision would build text past the budget."""
    for match in _FORMAT.finditer(fmt):
        for size in match.group(1, 2):
            if size == "*" or (size and (len(size) > 9 or int(size) > budget.max_text_length)):
                raise TemplateError(
                    f"{where}: format {match.group(0)!r} asks for a width or precision above "
                    f"max_text_length={budget.max_text_length}"
                )


def _cost_check(op: ast.operator, left: Any, right: Any, where: str, budget: Budgets) -> None:
    """Refuse an operation whose result would be too large, before computing it."""
    if isinstance(op, ast.Pow):
        if not isinstance(right, int) or right > _MAX_POWER:
            raise TemplateError(f"{where}: exponent {right!r} is too large")
        if right > 0 and _bits(left) * right > budget.max_int_bits:
            raise TemplateError(f"{where}: power of more than max_int_bits={budget.max_int_bits} bits")
    elif isinstance(op, ast.Mult) and _bits(left) + _bits(right) > budget.max_int_bits + 1:
        raise TemplateError(f"{where}: product of more than max_int_bits={budget.max_int_bits} bits")
    if isinstance(left, str) or isinstance(right, str):
        if not isinstance(op, (ast.Add, ast.Mod)):
            raise TemplateError(f"{where}: only + and % apply to text")
        if isinstance(op, ast.Mod) and isinstance(left, str):
            _check_format(left, where, budget)


def _eval_node(node: ast.AST, names: Mapping[str, Any], where: str, budget: Budgets, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise TemplateError(f"{where}: expression nested deeper than {_MAX_DEPTH} levels")
    depth += 1
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, names, where, budget, depth)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
        return _check_value(node.value, where, budget)
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise TemplateError(f"{where}: unknown template variable {node.id!r}")
        if isinstance(names[node.id], FunctionTemplate):
            raise _function_template_error(where, node.id, names[node.id])
        return _check_value(names[node.id], where, budget)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _eval_node(node.left, names, where, budget, depth)
        right = _eval_node(node.right, names, where, budget, depth)
        _cost_check(node.op, left, right, where, budget)
        try:
            result = _BINOPS[type(node.op)](left, right)
        except _EVAL_ERRORS as exc:
            raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from None
        return _check_value(result, where, budget)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operand = _eval_node(node.operand, names, where, budget, depth)
        try:
            return _UNARY[type(node.op)](operand)
        except _EVAL_ERRORS as exc:
            raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from None
    if isinstance(node, ast.Tuple):
        return tuple(_eval_node(e, names, where, budget, depth) for e in node.elts)
    raise TemplateError(
        f"{where}: unsupported template expression {ast.dump(node)[:80]!r}; "
        "only names, numbers, strings and + - * / // % ** are allowed"
    )


@functools.lru_cache(maxsize=1024)
def _parse(expression: str) -> ast.Expression | str:
    """The parsed *expression*, or the reason it cannot be parsed (parsed once per distinct text)."""
    try:
        return ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"


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
        For an unknown name, a disallowed expression, or a result past the
        budgets (:class:`~refstore.manifest._budgets.Budgets`).
    """
    if "{{" not in text:
        return text
    budget = current()
    produced = [len(text)]

    def substitute(match: re.Match[str]) -> str:
        inner = match.group(1)
        simple = _NAME.fullmatch(inner)
        if simple is not None:
            name = simple.group(1)
            if name not in names:
                raise TemplateError(f"{where}: unknown template {name!r} in {text[:200]!r}")
            if isinstance(names[name], FunctionTemplate):
                raise _function_template_error(where, name, names[name])
            out = str(names[name])
        elif (call := _CALL.match(inner)) is not None and isinstance(names.get(call.group(1)), FunctionTemplate):
            raise _function_template_error(where, call.group(1), names[call.group(1)])
        elif not expressions:
            raise TemplateError(
                f"{where}: template placeholder {{{{{inner[:80]}}}}} in {text[:200]!r} is not a plain name"
            )
        else:
            if len(inner) > budget.max_expression_length:
                raise TemplateError(
                    f"{where}: expression of {len(inner)} characters, more than "
                    f"max_expression_length={budget.max_expression_length}"
                )
            tree = _parse(inner.strip())
            if isinstance(tree, str):
                raise TemplateError(f"{where}: cannot parse expression {inner[:80]!r} ({tree})")
            out = str(_eval_node(tree, names, where, budget))
        produced[0] += len(out)
        if produced[0] > budget.max_text_length:
            raise TemplateError(
                f"{where}: {text[:80]!r} renders to more than max_text_length={budget.max_text_length} characters"
            )
        return out

    return _PLACEHOLDER.sub(substitute, text)


def resolve_templates(
    templates: Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> dict[str, str]:
    """Merge the manifest's templates with *overrides* (without mutating either).

    Template values may refer to other templates with ``{{name}}``.

    Raises
    ------
    TemplateError
        For a value that is not text, or that renders past ``max_text_length``.
    """
    merged = {**templates, **(overrides or {})}
    out: dict[str, str] = {}
    for name, value in merged.items():
        if not isinstance(value, str):
            raise TemplateError(f"template {name!r}: value must be text, got {type(value).__name__}")
        out[name] = value
    # one extra pass lets templates refer to earlier templates; cycles stay unexpanded. A value
    # naming no template is fsspec's function template: kept, and refused where it is used
    resolved: dict[str, str] = {}
    for name, v in out.items():
        if "{{" not in v:
            resolved[name] = v
        elif all(m is not None and m.group(1) in out for m in map(_NAME.fullmatch, _PLACEHOLDER.findall(v))):
            resolved[name] = render(v, out, f"template {name!r}", expressions=False)
        else:
            resolved[name] = FunctionTemplate(v)
    return resolved


def _dimension_values(name: str, spec: Any, where: str) -> list[Any] | range:
    """The values of one ``gen`` dimension: a list as given, or a lazy range (never materialised here)."""
    if isinstance(spec, list):
        return spec
    if isinstance(spec, Mapping):
        try:
            start, stop, step = int(spec.get("start", 0)), int(spec["stop"]), int(spec.get("step", 1))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise TemplateError(f"{where}: dimension {name!r} needs integer start/stop/step ({exc})") from None
        if step == 0:
            raise TemplateError(f"{where}: dimension {name!r} has step 0")
        return range(start, stop, step) if _range_size(start, stop, step) else range(0)
    raise TemplateError(f"{where}: dimension {name!r} must be a list or a {{start, stop, step}} object")


def _range_size(start: int, stop: int, step: int) -> int:
    """``len(range(start, stop, step))`` for integers of any size (``len`` overflows past 2**63)."""
    if step > 0:
        return max(0, (stop - start + step - 1) // step)
    return max(0, (start - stop - step - 1) // -step)


def _size(values: list[Any] | range) -> int:
    return _range_size(values.start, values.stop, values.step) if isinstance(values, range) else len(values)


def _expression_chars(gen: Mapping[str, Any]) -> int:
    """Characters inside the ``{{...}}`` of a gen entry's fields: what each generated key evaluates."""
    fields = (str(gen[f]) for f in ("key", "url", "offset", "length") if f in gen)
    return sum(len(m.group(1)) for text in fields for m in _PLACEHOLDER.finditer(text))


def generated_count(gens: Any) -> int:
    """How many keys the ``gen`` list would generate, at most ``max_generated_keys`` (entries
    :func:`expand_gen` refuses count 0; it raises for them)."""
    total = 0
    for gen in gens if isinstance(gens, list) else []:
        try:
            dims = gen.get("dimensions") or {}
            total += math.prod(_size(_dimension_values(d, dims[d], "gen")) for d in dims)
        except (TemplateError, AttributeError, TypeError, ValueError):
            continue
    return min(total, current().max_generated_keys)


def expand_gen(
    gens: list[Any], templates: Mapping[str, str]
) -> Iterator[tuple[str, str, int | None, int | None]]:
    """Yield ``(key, url, offset, length)`` for every entry the ``gen`` list describes.

    ``offset`` and ``length`` are None for a whole-object reference. The keys
    all entries generate are counted before the first is yielded.

    Raises
    ------
    TemplateError
        If an entry lacks ``key``/``url``/``dimensions``, gives only one of
        offset and length, uses a disallowed expression, or goes past a
        budget (``max_generated_keys``, ``max_expression_length``, ...).
    """
    budget = current()
    plans = []
    total = 0
    for n, gen in enumerate(gens):
        where = f"gen[{n}]"
        if not isinstance(gen, Mapping) or "key" not in gen or "url" not in gen:
            raise TemplateError(f"{where}: each gen entry needs 'key', 'url' and 'dimensions'")
        if ("offset" in gen) != ("length" in gen):
            raise TemplateError(f"{where}: give both 'offset' and 'length', or neither")
        dims = gen.get("dimensions") or {}
        if not isinstance(dims, Mapping):
            raise TemplateError(f"{where}: 'dimensions' must be an object")
        chars = _expression_chars(gen)
        if chars > budget.max_expression_length:
            raise TemplateError(
                f"{where}: its expressions have {chars} characters per key, more than "
                f"max_expression_length={budget.max_expression_length} (see refstore.manifest.budgets)"
            )
        names = list(dims)
        values = [_dimension_values(d, dims[d], where) for d in names]
        count = math.prod(map(_size, values))
        total += count
        if total > budget.max_generated_keys:
            raise TemplateError(
                f"{where}: the gen entries generate {total if total < 10**15 else f'{float(total):.3g}'} keys "
                f"or more, more than max_generated_keys={budget.max_generated_keys} "
                "(see refstore.manifest.budgets to raise it)"
            )
        if count:
            plans.append((where, gen, names, values))
    for where, gen, names, values in plans:
        has_range = "offset" in gen
        key_t, url_t = str(gen["key"]), str(gen["url"])
        off_t, len_t = (str(gen["offset"]), str(gen["length"])) if has_range else ("", "")
        for combo in itertools.product(*values):
            env = {**templates, **dict(zip(names, combo))}
            key = render(key_t, env, where, expressions=True)
            url = render(url_t, env, where, expressions=True)
            if has_range:
                try:
                    offset = int(render(off_t, env, where, expressions=True))
                    length = int(render(len_t, env, where, expressions=True))
                except (ValueError, OverflowError) as exc:
                    raise TemplateError(f"{where}: offset/length is not an integer ({exc})") from None
                yield key, url, offset, length
            else:
                yield key, url, None, None
