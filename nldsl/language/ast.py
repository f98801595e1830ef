"""The nldsl abstract syntax tree: pydantic models, one per grammar alias.

Every node carries the `Span` of the text it came from. Spans are excluded from dumps and
from equality, so `parse(print(spec)) == spec` compares meaning, not layout.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Span(BaseModel):
    """Where a node sits in its source: 1-based lines and columns, end exclusive."""

    model_config = ConfigDict(frozen=True)
    line: int = 0
    col: int = 0
    end_line: int = 0
    end_col: int = 0


NO_SPAN = Span()


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)
    span: Span = Field(default=NO_SPAN, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(repr(self.model_dump()))


# ---------------------------------------------------------------- expressions

class Number(Node):
    kind: Literal["number"] = "number"
    value: float | int


class Bool(Node):
    kind: Literal["bool"] = "bool"
    value: bool


class String(Node):
    kind: Literal["string"] = "string"
    value: str


class Name(Node):
    kind: Literal["name"] = "name"
    id: str


class Unary(Node):
    """`-a` or `not a`."""

    kind: Literal["unary"] = "unary"
    op: Literal["-", "not"]
    operand: Expr


class Binary(Node):
    """Arithmetic, matrix product, power, comparison and boolean operators."""

    kind: Literal["binary"] = "binary"
    op: Literal["+", "-", "*", "/", "@", "**", "<", "<=", ">", ">=", "==", "!=", "and", "or"]
    left: Expr
    right: Expr


class Conditional(Node):
    """`then if cond else otherwise`."""

    kind: Literal["conditional"] = "conditional"
    cond: Expr
    then: Expr
    otherwise: Expr


class Keyword(Node):
    kind: Literal["keyword"] = "keyword"
    name: str
    value: Expr


class Call(Node):
    """`f(a, b, key = c)`: a built-in function, or a memory state applied to an input."""

    kind: Literal["call"] = "call"
    func: str
    args: list[Expr] = []
    kwargs: list[Keyword] = []


class Index(Node):
    """`a[i]`: an element of a tuple hyper-parameter, or a head of a per-head tensor."""

    kind: Literal["index"] = "index"
    value: Expr
    index: Expr


class Tuple(Node):
    kind: Literal["tuple"] = "tuple"
    items: list[Expr]


Expr = Annotated[
    Union[Number, Bool, String, Name, Unary, Binary, Conditional, Call, Index, Tuple],
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------- hyper-parameters

class Bound(Node):
    """`> 0`, `>= 1`: a one-sided range."""

    kind: Literal["bound"] = "bound"
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: Expr


class Interval(Node):
    """`in [0, 1)`: closed or open at each end."""

    kind: Literal["interval"] = "interval"
    low: Expr
    high: Expr
    low_closed: bool
    high_closed: bool


class Choice(Node):
    """`in {"cubic", "quintic"}`."""

    kind: Literal["choice"] = "choice"
    options: list[Expr]


Constraint = Annotated[Union[Bound, Interval, Choice], Field(discriminator="kind")]


class HParam(Node):
    """A hyper-parameter: `lr = 1e-3 > 0`. No default means the user must give it."""

    name: str
    type: Literal["int", "float", "bool", "str"] | None = None
    default: Expr | None = None
    constraints: list[Constraint] = []


# ---------------------------------------------------------------- states

class LikeShape(Node):
    """`like W`: the shape of another state (an optimizer's parameter, usually)."""

    kind: Literal["like"] = "like"
    name: str


class TensorShape(Node):
    """`[d_v, d_k]`: a tensor with symbolic dims."""

    kind: Literal["tensor"] = "tensor"
    dims: list[Expr]


class ScalarShape(Node):
    kind: Literal["scalar"] = "scalar"


class MLPShape(Node):
    """`mlp(d -> 4 * d -> d, gelu, residual)`: widths, then options (activation, `residual`)."""

    kind: Literal["mlp"] = "mlp"
    widths: list[Expr]
    options: list[str] = []


Shape = Annotated[Union[LikeShape, TensorShape, ScalarShape, MLPShape], Field(discriminator="kind")]


class InitValue(Node):
    """`= 0`, `= normal(0.02)`: a fixed initial value."""

    kind: Literal["value"] = "value"
    value: Expr


class InitLearned(Node):
    """`init learned [by L]`: the initial state is meta-learned by a slower level (default: the
    outer level in a module, the next slower level in an optimizer) and the state restarts from
    it at the start of each of that level's periods."""

    kind: Literal["learned"] = "learned"
    by: str | None = None


Init = Annotated[Union[InitValue, InitLearned], Field(discriminator="kind")]


class State(Node):
    kind: Literal["state"] = "state"
    name: str
    shape: Shape
    init: Init | None = None


# ---------------------------------------------------------------- level items

class Context(Node):
    """`key k = ...`, `value`, `query`, `gate`, or a plain `let` definition."""

    kind: Literal["context"] = "context"
    role: Literal["key", "value", "query", "gate", "let"]
    name: str
    value: Expr


class Rule(Node):
    """A learning rule: `gd(lr, decay)`, `momentum(...)`, `ema(beta)`, `newton_schulz(5)`, ..."""

    name: str
    args: list[Expr] = []
    kwargs: list[Keyword] = []


class Objective(Node):
    """`[state:] minimize loss by rule then rule ...`."""

    kind: Literal["objective"] = "objective"
    state: str | None = None
    loss: Expr
    rules: list[Rule]


class Update(Node):
    """`W <- expr`: an explicit update."""

    kind: Literal["update"] = "update"
    target: str
    value: Expr


class Read(Node):
    """`read y = M(q)`; `before write` reads the state before this unit's write."""

    kind: Literal["read"] = "read"
    name: str
    value: Expr
    before_write: bool = False


class Output(Node):
    kind: Literal["output"] = "output"
    value: Expr


LevelItem = Annotated[Union[State, Context, Objective, Update, Read], Field(discriminator="kind")]


class Level(Node):
    """`level NAME every N unit [chunk C] [heads H] [backprop] [partial flush|drop] [once]
    { ... }`."""

    kind: Literal["level"] = "level"
    name: str
    every: Expr
    unit: Literal["step", "token"]
    chunk: Expr | None = None
    heads: Expr | None = None
    backprop: bool = False
    partial: Literal["flush", "drop"] | None = None
    once: bool = False             # one rule step per period (docs/language.md, `once`)
    items: list[LevelItem] = []


SpecItem = Annotated[
    Union[Level, State, Context, Objective, Update, Output], Field(discriminator="kind")
]


class SpecDecl(Node):
    """One spec file: an `optimizer` or a `module`."""

    kind: Literal["optimizer", "module"]
    name: str
    hparams: list[HParam] = []
    items: list[SpecItem] = []

    @property
    def levels(self) -> list[Level]:
        return [item for item in self.items if isinstance(item, Level)]


for _model in (Unary, Binary, Conditional, Keyword, Call, Index, Tuple, Bound, Interval, Choice,
               HParam, TensorShape, MLPShape, InitValue, State, Context, Rule, Objective, Update,
               Read, Output, Level, SpecDecl):
    _model.model_rebuild()
