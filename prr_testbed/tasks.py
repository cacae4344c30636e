"""Verifiable task families: generators, exact checkers and fixed held-out test sets.

The shipped model's three families (FAMILY_NAMES), each with dependencies between answer tokens:

  arith   multi-digit addition (2-8 digits) or multiplication by one digit (3-7 digits), with the written carry
          chain:                    "4821+7395="  ->  "c:1110 s:12216"      (carry out of each column, msb first)
                                    "4821*7="     ->  "c:3510 s:33747"
          checked exactly (the carry chain and the result, recomputed from the prompt).
  words   GSM8K-like multi-step word problems (12 templates), intermediate equations and a final answer:
          "Mia has 12 pens. She buys 5 packs of 3, gives away 7. How many pens now?"
                                    ->  "5*3=15. 12+15=27. 27-7=20. #### 20"
          checked on the final `#### answer` (as GSM8K is).
  sudoku  4x4 Sudoku (digits 1-4, 2x2 boxes), '.' = blank, rows joined by '/'; puzzles have a unique solution that
          naked/hidden singles reach:  "1.3./...2/2.../.3.1="  ->  "1234/3412/2143/4321"
          checked as a valid grid that keeps every given (all answer positions depend on each other).

Every response is followed by <eos> up to the family's generation length (LLaDA style); response lengths differ
between and within families (arith 11-22, words 20-35, sudoku 19 characters); prompt + canvas <= 128 tokens.

Five long families (LONG_FAMILY_NAMES) share one 160-slot canvas, with answers of 3 to 89 characters
that are written out step by step, each step computed from the ones before it:

  mul     1-6 digits times 1-4 digits, partial products, the carries of their sum, the sum, in columns of
          the product's width:                            "12*305="  ->  "p:0060+0000+3600 c:0000 s:3660"
  cumsum  running sums of 2-16 numbers below 100:         "cumsum 3 8 1 9="  ->  "3 11 12 21"
  sort    2-20 numbers below 1000, ascending:             "sort 53 7 21 7="  ->  "7 7 21 53"
  trace   2-6 assignments over a, b, c, d, each written out with the values it reads and assigns:
                                                "run a=3;b=a+4;a=b-a?"  ->  "a=3 b=a+4=3+4=7 a=b-a=7-3=4"
  chain   from a start of 2-4 digits, 2-16 times add the current value's digit sum:
                                                          "chain 37 4="  ->  "47 58 71 79"

and four step families (STEP_FAMILY_NAMES) on the same canvas, whose dependent steps are one or two characters each,
so that decoding one token per forward and a rule's forwards count the same units (docs/long_families.md, stages 9-11:
why); they are the families on which the rules separate in the paper's regime (issue 21's bar):

  cups    the ball's cup (of four) after each of 3-30 swaps, one digit per swap:  "cups 2:12 34 24="  ->  "111"
  balls   two balls' cups after each of 3-30 swaps, a pair of digits per swap:   "balls 13:12 34 24="  ->  "232442"
  ring    the cell of a ring of ten after each of 3-30 moves, one digit per move:    "ring 3:4729="  ->  "7465"
  dial    a dial's position (00-99) after each of 3-30 turns, two digits per turn:  "dial 37:12 95 40="  ->  "494484"

each checked exactly against the answer recomputed from the prompt (docs/long_families.md: why these formats, and how
far the commit rules separate on them). They are meant as the workload on which the rules separate: a rule that
commits a step's tokens before the steps they depend on are settled loses accuracy.

Splits: a prompt belongs to "test" / "valid" / "train" by a hash of (family, prompt) (5% / 5% / 90%). Training data
is drawn from the train split only (rejection sampling), so the held-out sets are disjoint from training by
construction, whatever the seeds. `heldout_set(family)` is the fixed-seed test set (500 prompts by default).
Pure Python (no torch).
"""
from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

SPLIT_BUCKETS = 1000
TEST_BUCKETS = 50      # hash bucket < 50        -> test   (5%)
VALID_BUCKETS = 100    # 50 <= bucket < 100      -> valid  (5%)
HELDOUT_SEED = 20240605
DEFAULT_HELDOUT_SIZE = 500


@dataclass(frozen=True)
class Example:
    family: str
    prompt: str
    response: str   # the canonical response (without <eos>)
    answer: str     # the canonical final answer (arith: the result, words: the #### number, sudoku: the grid)


def split_of(family: str, prompt: str) -> str:
    """'test', 'valid' or 'train', by a hash of (family, prompt)."""
    h = int.from_bytes(hashlib.sha256(f"{family}\x00{prompt}".encode()).digest()[:8], "little") % SPLIT_BUCKETS
    if h < TEST_BUCKETS:
        return "test"
    if h < VALID_BUCKETS:
        return "valid"
    return "train"


class TaskFamily:
    """A task family: `sample(rng)` draws an Example (any split); `check(example, response)` grades a response."""

    name: str = ""
    gen_length: int = 0     # canvas slots for the response + <eos> padding
    block_length: int = 0   # default semi-autoregressive block length (divides gen_length)

    def sample(self, rng: random.Random) -> Example:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, example: Example, response: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_split(self, rng: random.Random, split: str = "train") -> Example:
        """Rejection-sample an Example whose prompt lies in `split`."""
        while True:
            ex = self.sample(rng)
            if split_of(self.name, ex.prompt) == split:
                return ex

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gen_length={self.gen_length}, block_length={self.block_length})"


# ---------------------------------------------------------------------------------------------------------------
# arith: addition / multiplication by one digit, with the written carry chain
# ---------------------------------------------------------------------------------------------------------------
def _rand_int_digits(rng: random.Random, n: int) -> int:
    return rng.randint(10 ** (n - 1), 10 ** n - 1)


def arith_solution(a: int, op: str, b: int) -> Tuple[str, str]:
    """(carries, result) of the written algorithm: carry out of each column of the longer operand, msb first."""
    da = [int(c) for c in str(a)][::-1]
    if op == "+":
        db = [int(c) for c in str(b)][::-1]
        n = max(len(da), len(db))
        da += [0] * (n - len(da))
        db += [0] * (n - len(db))
        carry, carries = 0, []
        for i in range(n):
            carry = (da[i] + db[i] + carry) // 10
            carries.append(carry)
        return "".join(map(str, carries[::-1])), str(a + b)
    if op == "*":
        if not 0 <= b <= 9:
            raise ValueError("multiplier must be one digit")
        carry, carries = 0, []
        for d in da:
            carry = (d * b + carry) // 10
            carries.append(carry)
        return "".join(map(str, carries[::-1])), str(a * b)
    raise ValueError(f"unknown op {op!r}")


class Arith(TaskFamily):
    name = "arith"
    gen_length = 24
    block_length = 12
    _re = re.compile(r"^(\d+)([+*])(\d+)=$")

    def sample(self, rng: random.Random) -> Example:
        if rng.random() < 0.6:
            n = rng.randint(3, 8)
            m = rng.randint(2, n)
            a, b = _rand_int_digits(rng, n), _rand_int_digits(rng, m)
            if rng.random() < 0.5:
                a, b = b, a
            op = "+"
        else:
            a, b, op = _rand_int_digits(rng, rng.randint(3, 7)), rng.randint(2, 9), "*"
        carries, result = arith_solution(a, op, b)
        return Example(self.name, f"{a}{op}{b}=", f"c:{carries} s:{result}", result)

    def check(self, example: Example, response: str) -> bool:
        m = self._re.match(example.prompt)
        if not m:
            raise ValueError(f"not an arith prompt: {example.prompt!r}")
        carries, result = arith_solution(int(m.group(1)), m.group(2), int(m.group(3)))
        return response.strip() == f"c:{carries} s:{result}"


# ---------------------------------------------------------------------------------------------------------------
# words: GSM8K-like templates
# ---------------------------------------------------------------------------------------------------------------
_NAMES = (("Ann", "She"), ("Ben", "He"), ("Mia", "She"), ("Tom", "He"), ("Eva", "She"), ("Sam", "He"),
          ("Lily", "She"), ("Jack", "He"), ("Zoe", "She"), ("Leo", "He"), ("Nina", "She"), ("Max", "He"))
_ITEMS = ("pens", "cards", "books", "shells", "apples", "coins", "stamps", "rocks", "toys", "beads", "nuts", "eggs")


def _w_buy_give(r):
    (n, p), it = r.choice(_NAMES), r.choice(_ITEMS)
    a, b, c = r.randint(2, 40), r.randint(2, 9), r.randint(2, 9)
    s = a + b * c
    d = r.randint(1, s - 1)
    return (f"{n} has {a} {it}. {p} buys {b} packs of {c}, gives away {d}. How many {it} now?",
            [(b, "*", c), (a, "+", b * c), (s, "-", d)])


def _w_wage(r):
    n, _ = r.choice(_NAMES)
    a, b = r.randint(5, 25), r.randint(2, 9)
    c = r.randint(1, a * b - 1)
    return (f"{n} earns ${a} an hour for {b} hours and spends ${c}. How much is left?",
            [(a, "*", b), (a * b, "-", c)])


def _w_groups(r):
    a, b, d = r.randint(2, 12), r.randint(2, 12), r.randint(2, 9)
    x = a * b
    ys = [y for y in range(d, x, d)]  # what is left after some die: a positive multiple of d, < x
    if not ys:
        return _w_groups(r)
    y = r.choice(ys)
    return (f"{a} rows of {b} trees. {x - y} die, the rest form {d} equal groups. How many per group?",
            [(a, "*", b), (x, "-", x - y), (y, "/", d)])


def _w_read(r):
    n, _ = r.choice(_NAMES)
    a, b, c = r.randint(5, 30), r.randint(2, 9), r.randint(1, 50)
    return (f"{n} reads {a} pages a day for {b} days, then {c} more. How many pages in all?",
            [(a, "*", b), (a * b, "+", c)])


def _w_more(r):
    (n, _), (m, _) = r.sample(_NAMES, 2)
    it = r.choice(_ITEMS)
    a, b = r.randint(5, 60), r.randint(2, 60)
    return (f"{n} has {a} {it}. {m} has {b} more than {n}. How many {it} in total?",
            [(a, "+", b), (a, "+", a + b)])


def _w_times(r):
    a, k = r.randint(3, 40), r.randint(2, 5)
    return (f"A shop sold {a} cakes on Monday and {k} times as many on Tuesday. How many in all?",
            [(a, "*", k), (a, "+", a * k)])


def _w_spend(r):
    n, p = r.choice(_NAMES)
    a = r.randint(20, 99)
    b = r.randint(1, a - 2)
    c = r.randint(1, a - b - 1)
    return (f"{n} had ${a}. {p} spent ${b} on food and ${c} on a toy. How much is left?",
            [(b, "+", c), (a, "-", b + c)])


def _w_share(r):
    a, q = r.randint(2, 9), r.randint(2, 12)
    c = r.randint(1, q - 1)
    return (f"{a} kids share {a * q} apples equally. Each eats {c}. How many does each have left?",
            [(a * q, "/", a), (q, "-", c)])


def _w_change(r):
    n, _ = r.choice(_NAMES)
    a, b = r.randint(2, 9), r.randint(2, 15)
    c = a * b + r.randint(1, 40)
    return (f"{n} buys {a} shirts at ${b} each and pays ${c}. What is the change?",
            [(a, "*", b), (c, "-", a * b)])


def _w_bus(r):
    a = r.randint(10, 60)
    b, c = r.randint(1, a - 1), r.randint(1, 30)
    return (f"A bus has {a} people. At a stop {b} get off and {c} get on. How many are on it?",
            [(a, "-", b), (a - b, "+", c)])


def _w_bags(r):
    n, _ = r.choice(_NAMES)
    it = r.choice(_ITEMS)
    a, b, c, d = r.randint(2, 9), r.randint(2, 12), r.randint(2, 9), r.randint(2, 12)
    return (f"{n} buys {a} bags of {b} {it} and {c} bags of {d}. How many {it} in all?",
            [(a, "*", b), (c, "*", d), (a * b, "+", c * d)])


def _w_save(r):
    n, p = r.choice(_NAMES)
    a, b, c = r.randint(2, 20), r.randint(2, 9), r.randint(1, 50)
    return (f"{n} saves ${a} a week for {b} weeks. {p} already had ${c}. How much now?",
            [(a, "*", b), (a * b, "+", c)])


WORD_TEMPLATES = (_w_buy_give, _w_wage, _w_groups, _w_read, _w_more, _w_times, _w_spend, _w_share, _w_change,
                  _w_bus, _w_bags, _w_save)
_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}


class Words(TaskFamily):
    name = "words"
    gen_length = 48
    block_length = 16
    _answer_re = re.compile(r"#### (-?\d+)$")

    def sample(self, rng: random.Random) -> Example:
        prompt, steps = rng.choice(WORD_TEMPLATES)(rng)
        eqs = []
        for x, op, y in steps:
            v = _OPS[op](x, y)
            assert v > 0 and (op != "/" or x % y == 0), (prompt, steps)
            eqs.append(f"{x}{op}{y}={v}")
        ans = str(v)
        return Example(self.name, prompt, ". ".join(eqs) + f". #### {ans}", ans)

    def check(self, example: Example, response: str) -> bool:
        m = self._answer_re.search(response.strip())
        return bool(m) and m.group(1) == example.answer


# ---------------------------------------------------------------------------------------------------------------
# sudoku: 4x4, unique solution reachable by naked / hidden singles
# ---------------------------------------------------------------------------------------------------------------
_UNITS: List[Tuple[int, ...]] = ([tuple(4 * r + c for c in range(4)) for r in range(4)] +
                                 [tuple(4 * r + c for r in range(4)) for c in range(4)] +
                                 [tuple(4 * (br + r) + bc + c for r in range(2) for c in range(2))
                                  for br in (0, 2) for bc in (0, 2)])
_PEERS: List[Tuple[int, ...]] = [tuple(sorted({p for u in _UNITS if i in u for p in u} - {i})) for i in range(16)]


@functools.lru_cache(maxsize=1)
def sudoku_solutions() -> Tuple[Tuple[int, ...], ...]:
    """All 288 valid 4x4 grids (row-major tuples of 1..4), in lexicographic order."""
    out, g = [], [0] * 16

    def rec(i):
        if i == 16:
            out.append(tuple(g))
            return
        for v in range(1, 5):
            if all(g[p] != v for p in _PEERS[i] if p < i):
                g[i] = v
                rec(i + 1)
        g[i] = 0

    rec(0)
    return tuple(out)


def solve_singles(cells: Sequence[int]) -> Optional[List[int]]:
    """Fill a 4x4 puzzle (0 = blank) by naked and hidden singles; the solution, or None if they get stuck."""
    g = list(cells)
    while True:
        blanks = [i for i in range(16) if g[i] == 0]
        if not blanks:
            return g
        progress = False
        for i in blanks:  # naked singles
            cand = {1, 2, 3, 4} - {g[p] for p in _PEERS[i]}
            if not cand:
                return None
            if len(cand) == 1:
                g[i] = cand.pop()
                progress = True
        if not progress:  # hidden singles
            for u in _UNITS:
                for v in range(1, 5):
                    if any(g[i] == v for i in u):
                        continue
                    spots = [i for i in u if g[i] == 0 and all(g[p] != v for p in _PEERS[i])]
                    if len(spots) == 1:
                        g[spots[0]] = v
                        progress = True
        if not progress:
            return None


def sudoku_valid(grid: Sequence[int]) -> bool:
    return len(grid) == 16 and all(sorted(grid[i] for i in u) == [1, 2, 3, 4] for u in _UNITS)


def _grid_str(cells: Sequence[int], blank: str = ".") -> str:
    s = "".join(str(v) if v else blank for v in cells)
    return "/".join(s[i:i + 4] for i in range(0, 16, 4))


class Sudoku(TaskFamily):
    name = "sudoku"
    gen_length = 20
    block_length = 20
    _prompt_re = re.compile(r"^([1-4.]{4})/([1-4.]{4})/([1-4.]{4})/([1-4.]{4})=$")
    _resp_re = re.compile(r"^([1-4]{4})/([1-4]{4})/([1-4]{4})/([1-4]{4})$")

    def sample(self, rng: random.Random) -> Example:
        sol = rng.choice(sudoku_solutions())
        target = rng.randint(4, 10)  # clues to keep at most; removal stops early when singles would get stuck
        cells = list(sol)
        order = list(range(16))
        rng.shuffle(order)
        kept = 16
        for i in order:
            if kept <= target:
                break
            v, cells[i] = cells[i], 0
            if solve_singles(cells) is None:
                cells[i] = v
            else:
                kept -= 1
        ans = _grid_str(sol)
        return Example(self.name, _grid_str(cells) + "=", ans, ans)

    def check(self, example: Example, response: str) -> bool:
        m, r = self._prompt_re.match(example.prompt), self._resp_re.match(response.strip())
        if not m:
            raise ValueError(f"not a sudoku prompt: {example.prompt!r}")
        if not r:
            return False
        given = "".join(m.groups())
        grid = [int(c) for c in "".join(r.groups())]
        return sudoku_valid(grid) and all(g == "." or int(g) == v for g, v in zip(given, grid))


# ---------------------------------------------------------------------------------------------------------------
# long families: variable-length answers whose tokens depend on each other, under one 160-slot canvas
# ---------------------------------------------------------------------------------------------------------------
LONG_GEN_LENGTH = 160   # one maximum canvas for every long family: answers of 3 to 89 characters, then <eos>
LONG_BLOCK_LENGTH = 32


def mul_response(a: int, b: int) -> str:
    """The written long multiplication in columns: the partial products a * d * 10^i of b's digits d, least
    significant first, then the carry out of each column of their sum and the sum, every field zero-padded to the
    product's width W (carries msb first): 347*28 -> "p:2776+6940 c:0110 s:9716", 12*305 -> "p:0060+0000+3600
    c:0000 s:3660". Equal widths put column j at the same offset in every field, so each digit of the sum is a
    function of the digits above it and the carry beside it, as in arith."""
    W = len(str(a * b))
    partials = [str(a * int(d) * 10 ** i).zfill(W) for i, d in enumerate(reversed(str(b)))]
    carry, carries = 0, []
    for j in range(W):
        carry = (sum(int(p[W - 1 - j]) for p in partials) + carry) // 10
        carries.append(carry)
    return "p:" + "+".join(partials) + " c:" + "".join(map(str, carries[::-1])) + f" s:{a * b}"


class Mul(TaskFamily):
    """Multi-digit multiplication (1-6 digits by 1-4 digits) with its written partial products and the carries of
    their sum, in columns of one width: the carries and the sum must agree with every partial product before
    them."""

    name = "mul"
    gen_length = LONG_GEN_LENGTH
    block_length = LONG_BLOCK_LENGTH
    _re = re.compile(r"^(\d+)\*(\d+)=$")

    def sample(self, rng: random.Random) -> Example:
        a, b = _rand_int_digits(rng, rng.randint(1, 6)), _rand_int_digits(rng, rng.randint(1, 4))
        return Example(self.name, f"{a}*{b}=", mul_response(a, b), str(a * b))

    def check(self, example: Example, response: str) -> bool:
        m = self._re.match(example.prompt)
        if not m:
            raise ValueError(f"not a mul prompt: {example.prompt!r}")
        return response.strip() == mul_response(int(m.group(1)), int(m.group(2)))


def _number_list(rng: random.Random, n_lo: int, n_hi: int, v_hi: int) -> List[int]:
    """n (uniform in [n_lo, n_hi]) numbers, each with a uniform digit count up to v_hi's, then a uniform value."""
    digits = len(str(v_hi))
    out = []
    for _ in range(rng.randint(n_lo, n_hi)):
        d = rng.randint(1, digits)
        out.append(rng.randint(0 if d == 1 else 10 ** (d - 1), min(v_hi, 10 ** d - 1)))
    return out


class _ListFamily(TaskFamily):
    """A prompt "<name> v1 v2 ...=" whose answer is a list of numbers computed from the input list."""

    n_lo = n_hi = v_hi = 0

    def __init__(self):
        self._re = re.compile(rf"^{self.name} (\d+(?: \d+)*)=$")

    def answer_of(self, values: List[int]) -> List[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, rng: random.Random) -> Example:
        values = _number_list(rng, self.n_lo, self.n_hi, self.v_hi)
        ans = " ".join(map(str, self.answer_of(values)))
        return Example(self.name, f"{self.name} " + " ".join(map(str, values)) + "=", ans, ans)

    def check(self, example: Example, response: str) -> bool:
        m = self._re.match(example.prompt)
        if not m:
            raise ValueError(f"not a {self.name} prompt: {example.prompt!r}")
        want = " ".join(map(str, self.answer_of([int(v) for v in m.group(1).split()])))
        return response.strip() == want


class CumSum(_ListFamily):
    """Running sums of 2-16 numbers below 100: every value is the previous one plus an input."""

    name, n_lo, n_hi, v_hi = "cumsum", 2, 16, 99
    gen_length = LONG_GEN_LENGTH
    block_length = LONG_BLOCK_LENGTH

    def answer_of(self, values: List[int]) -> List[int]:
        out, total = [], 0
        for v in values:
            total += v
            out.append(total)
        return out


class Sort(_ListFamily):
    """2-20 numbers below 1000, sorted ascending (repeats kept): the answer is a permutation of the input, so each
    value placed constrains every other."""

    name, n_lo, n_hi, v_hi = "sort", 2, 20, 999
    gen_length = LONG_GEN_LENGTH
    block_length = LONG_BLOCK_LENGTH

    def answer_of(self, values: List[int]) -> List[int]:
        return sorted(values)


TRACE_VARS = "abcd"
TRACE_MAX_STATEMENTS = 6


def trace_response(program: str) -> str:
    """Each statement of a straight-line program in order, with the values it reads and the value it assigns: a
    constant as written, any other statement followed by "=operands=value": "a=3;b=a+4;a=b-a" -> "a=3 b=a+4=3+4=7
    a=b-a=7-3=4". Statements: x=N (one digit), x=y+N, x=y+z, x=y-z. Writing the operands' values out makes the
    lookup of each variable's latest value a step of its own, before the arithmetic that uses it."""
    env: Dict[str, int] = {}
    out = []
    for stmt in program.split(";"):
        target, expr = stmt.split("=")
        m = re.fullmatch(r"([a-z])([+-])([a-z]|\d)", expr)
        if expr.isdigit():
            value, written = int(expr), stmt
        elif m:
            lhs, rhs = env[m.group(1)], int(m.group(3)) if m.group(3).isdigit() else env[m.group(3)]
            value = lhs + rhs if m.group(2) == "+" else lhs - rhs
            written = f"{stmt}={lhs}{m.group(2)}{rhs}={value}"
        else:
            raise ValueError(f"not a trace statement: {stmt!r}")
        env[target] = value
        out.append(written)
    return " ".join(out)


class Trace(TaskFamily):
    """Program tracing: 2-6 assignments over four variables (constants, +constant, sums and differences of
    variables); the answer writes out each statement with the values it reads and the value it assigns, each read
    from the statements listed before it."""

    name = "trace"
    gen_length = LONG_GEN_LENGTH
    block_length = LONG_BLOCK_LENGTH
    _re = re.compile(r"^run ([a-z0-9=+;-]+)\?$")

    def sample(self, rng: random.Random) -> Example:
        assigned: List[str] = []
        stmts = []
        for _ in range(rng.randint(2, TRACE_MAX_STATEMENTS)):
            target = rng.choice(TRACE_VARS)
            kind = rng.random() if len(assigned) >= 1 else 0.0
            if kind < 0.25:
                expr = str(rng.randint(0, 9))
            elif kind < 0.5:
                expr = f"{rng.choice(assigned)}+{rng.randint(1, 9)}"
            else:
                expr = f"{rng.choice(assigned)}{rng.choice('+-')}{rng.choice(assigned)}"
            stmts.append(f"{target}={expr}")
            if target not in assigned:
                assigned.append(target)
        program = ";".join(stmts)
        ans = trace_response(program)
        return Example(self.name, f"run {program}?", ans, ans)

    def check(self, example: Example, response: str) -> bool:
        m = self._re.match(example.prompt)
        if not m:
            raise ValueError(f"not a trace prompt: {example.prompt!r}")
        return response.strip() == trace_response(m.group(1))


def digit_chain(start: int, steps: int) -> List[int]:
    """x_1 .. x_steps of x_{k+1} = x_k + (the sum of x_k's digits), from x_0 = start: 37 -> 47 58 71 79 95."""
    out, x = [], start
    for _ in range(steps):
        x += sum(map(int, str(x)))
        out.append(x)
    return out


class Chain(TaskFamily):
    """A digit-sum chain: from a start of 2-4 digits, 2-16 times add the current value's digit sum ("chain 37 4=" ->
    "47 58 71 79"). Each value is computed from the exact digits of the one before, and no closed form skips a step,
    so a value can be settled only once its predecessor is: a forward of a model of the testbed's depth holds a step
    or two of the chain, and a rule that commits later values early commits guesses."""

    name = "chain"
    gen_length = LONG_GEN_LENGTH
    block_length = LONG_BLOCK_LENGTH
    _re = re.compile(r"^chain (\d+) (\d+)=$")

    def sample(self, rng: random.Random) -> Example:
        start, steps = _rand_int_digits(rng, rng.randint(2, 4)), rng.randint(2, 16)
        ans = " ".join(map(str, digit_chain(start, steps)))
        return Example(self.name, f"chain {start} {steps}=", ans, ans)

    def check(self, example: Example, response: str) -> bool:
        m = self._re.match(example.prompt)
        if not m:
            raise ValueError(f"not a chain prompt: {example.prompt!r}")
        return response.strip() == " ".join(map(str, digit_chain(int(m.group(1)), int(m.group(2)))))


def cups_track(start: int, swaps: Sequence[Tuple[int, int]]) -> List[int]:
    """The cup that holds the ball after each swap, from cup `start`: 2, [(1, 2), (3, 4), (2, 4)] -> [1, 1, 1]."""
    out, at = [], start
    for a, b in swaps:
        at = b if at == a else a if at == b else at
        out.append(at)
    return out


def _swaps_text(swaps: Sequence[Tuple[int, int]]) -> str:
    """[(1, 2), (3, 4)] -> "12 34": the swaps as a cups or balls prompt writes them."""
    return " ".join(f"{a}{b}" for a, b in swaps)


class Cups(TaskFamily):
    """The shell game: a ball starts under one of four cups, 3-30 swaps of two cups follow, and the answer is the
    ball's cup after each swap, one digit per swap ("cups 2:12 34 24=" -> "111"). A digit needs the one before it
    (has this swap moved the ball?), so the answer is a chain of lookups, one per character, and no arithmetic
    shortcut skips ahead: a forward can settle only the few steps its layers hold. Unlike the other long families,
    each dependent step is one token, so vanilla's one token per forward and a rule's forwards count the same units
    (docs/long_families.md, stage 8)."""

    name = "cups"
    gen_length = LONG_GEN_LENGTH
    block_length = LONG_BLOCK_LENGTH
    CUPS = 4
    _re = re.compile(r"^cups ([1-4]):((?:[1-4][1-4] )*[1-4][1-4])=$")

    def sample(self, rng: random.Random) -> Example:
        start = rng.randint(1, self.CUPS)
        swaps = self._draw_swaps(rng)
        ans = "".join(map(str, cups_track(start, swaps)))
        return Example(self.name, f"cups {start}:{_swaps_text(swaps)}=", ans, ans)

    def check(self, example: Example, response: str) -> bool:
        (start,), swaps = self._parse(example.prompt)
        return response.strip() == "".join(map(str, cups_track(start, swaps)))

    # shared with Balls, whose prompts start with two cups instead of one
    def _draw_swaps(self, rng: random.Random) -> List[Tuple[int, int]]:
        return [tuple(rng.sample(range(1, self.CUPS + 1), 2)) for _ in range(rng.randint(3, 30))]

    def _parse(self, prompt: str) -> Tuple[Tuple[int, ...], List[Tuple[int, int]]]:
        """(the starting cups, the swaps) of a prompt; ValueError naming the family for another prompt."""
        m = self._re.match(prompt)
        if not m:
            raise ValueError(f"not a {self.name} prompt: {prompt!r}")
        *starts, swaps = m.groups()
        return tuple(map(int, starts)), [(int(w[0]), int(w[1])) for w in swaps.split()]


def balls_response(a: int, b: int, swaps: Sequence[Tuple[int, int]]) -> str:
    """A's and B's cups after each swap, from cups a and b: 1, 3, [(1, 2), (3, 4), (2, 4)] -> "232442"."""
    return "".join(f"{x}{y}" for x, y in zip(cups_track(a, swaps), cups_track(b, swaps)))


class Balls(Cups):
    """The shell game with two balls, A and B, under different cups of four: after each of 3-30 swaps the answer
    writes A's cup and B's cup, two digits per swap ("balls 13:12 34 24=" -> "232442"). A step's two digits must
    agree with each other (never the same cup; a swap of their two cups exchanges them), so a rule that commits them
    from separate marginals can write a pair that no track allows."""

    name = "balls"
    _re = re.compile(r"^balls ([1-4])([1-4]):((?:[1-4][1-4] )*[1-4][1-4])=$")

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.sample(range(1, self.CUPS + 1), 2)
        swaps = self._draw_swaps(rng)
        ans = balls_response(a, b, swaps)
        return Example(self.name, f"balls {a}{b}:{_swaps_text(swaps)}=", ans, ans)

    def check(self, example: Example, response: str) -> bool:
        (a, b), swaps = self._parse(example.prompt)
        return response.strip() == balls_response(a, b, swaps)


def ring_walk(start: int, moves: Sequence[int], cells: int = 10) -> List[int]:
    """The cell after each move on a ring of `cells` cells, from cell `start`: 3, [4, 7, 2, 9] -> [7, 4, 6, 5]."""
    out, at = [], start
    for m in moves:
        at = (at + m) % cells
        out.append(at)
    return out


def dial_response(start: int, turns: Sequence[int], cells: int = 100) -> str:
    """The position after each turn on a dial of `cells` positions, each written with the digits of the largest:
    37, [12, 95, 40] -> "494484"; cells=10 gives ring's one digit per move (3, [4, 7, 2, 9] -> "7465")."""
    width = len(str(cells - 1))
    return "".join(f"{at:0{width}d}" for at in ring_walk(start, turns, cells))


class Ring(TaskFamily):
    """A walk on a ring of ten cells: from a start cell, 3-30 moves of 1-9 cells clockwise, and the answer is the
    cell after each move, one digit per move ("ring 3:4729=" -> "7465"): running sums modulo ten, each digit the
    one before plus a move. The group is abelian (unlike cups'), so a model could in principle sum a prefix of moves
    in one forward; how many digits a forward settles measures how far it does."""

    name = "ring"
    gen_length = LONG_GEN_LENGTH
    block_length = LONG_BLOCK_LENGTH
    CELLS, SEP = 10, ""   # a move of 1..CELLS-1, written with the digits of CELLS-1; SEP between moves
    _re = re.compile(r"^ring (\d):([1-9]+)=$")

    def sample(self, rng: random.Random) -> Example:
        start, moves = rng.randint(0, self.CELLS - 1), [rng.randint(1, self.CELLS - 1)
                                                        for _ in range(rng.randint(3, 30))]
        w = len(str(self.CELLS - 1))
        ans = dial_response(start, moves, self.CELLS)
        return Example(self.name, f"{self.name} {start:0{w}d}:{self.SEP.join(f'{m:0{w}d}' for m in moves)}=", ans,
                       ans)

    def check(self, example: Example, response: str) -> bool:
        m = self._re.match(example.prompt)
        if not m:
            raise ValueError(f"not a {self.name} prompt: {example.prompt!r}")
        moves = m.group(2).split(self.SEP) if self.SEP else list(m.group(2))
        return response.strip() == dial_response(int(m.group(1)), [int(v) for v in moves], self.CELLS)


class Dial(Ring):
    """A dial of a hundred positions (00-99): from a start, 3-30 turns of 1-99 positions clockwise, and the answer is
    the position after each turn, two digits per turn ("dial 37:12 95 40=" -> "494484"). A step's two digits must
    agree with each other: the tens digit changes with the units' carry, so a model torn between 49 and 50 whose
    rule commits the two digits from their separate marginals can write 40 or 59, which no turn reaches."""

    name = "dial"
    CELLS, SEP = 100, " "
    _re = re.compile(r"^dial (\d\d):((?:\d\d )*\d\d)=$")


# ---------------------------------------------------------------------------------------------------------------
# registry and held-out sets
# ---------------------------------------------------------------------------------------------------------------
FAMILIES: Dict[str, TaskFamily] = {f.name: f for f in (Arith(), Words(), Sudoku(), Mul(), CumSum(), Sort(), Trace(),
                                                        Chain(), Cups(), Balls(), Ring(), Dial())}
FAMILY_NAMES = ("arith", "words", "sudoku")                 # the shipped model's families (the commands' default)
LONG_FAMILY_NAMES = ("mul", "cumsum", "sort", "trace", "chain")  # variable-length answers, one 160-slot canvas
# one or two tokens per dependent step, on the same canvas: the families on which issue 21's bar holds
STEP_FAMILY_NAMES = ("cups", "balls", "ring", "dial")


def get_family(name: str) -> TaskFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; known: {list(FAMILIES)}") from None


@functools.lru_cache(maxsize=None)
def _heldout(family: str, split: str, n: int, seed: int) -> Tuple[Example, ...]:
    fam = get_family(family)
    rng = random.Random(f"prr_ext.tasks/{family}/{split}/{seed}")  # this string seeds the fixed held-out sets
    seen, out = set(), []
    while len(out) < n:
        ex = fam.sample_split(rng, split)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return tuple(out)


def heldout_set(family: str, split: str = "test", n: int = DEFAULT_HELDOUT_SIZE,
                seed: int = HELDOUT_SEED) -> List[Example]:
    """The fixed-seed held-out set of a family: `n` distinct prompts of `split` ("test" or "valid").

    The first k examples of a set of size n are the set of size k (the sequence does not depend on n)."""
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    return list(_heldout(family, split, int(n), int(seed)))


def heldout_fingerprint(examples: Sequence[Example]) -> str:
    """A short hash of a list of examples (detects generator drift across versions)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.family}\x00{ex.prompt}\x00{ex.response}\x01".encode())
    return h.hexdigest()[:16]
