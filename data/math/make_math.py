"""Write the built-in math word problems (train + two held-out sets) with exact gold answers.

Problems come from skills written for prefsmith (a number draw plus several phrasings each), with numbers drawn
from a fixed seed, so the set is reproducible: `python data/math/make_math.py` rewrites train.jsonl,
heldout.jsonl and heldout_alt.jsonl byte for byte.
- train.jsonl: 20 skills, 2-3 phrasings each (800 problems);
- heldout.jsonl: the same skills and phrasings with other numbers, each problem drawn again until it shares no
  13-word run with any training problem (decontaminate's own index and rule, so `decontaminate --against
  math-heldout` removes nothing from the training set);
- heldout_phrasings.jsonl: the same skills in phrasings training never uses (harder: longer sentences);
- heldout_alt.jsonl: five easy skills in yet other sentence shapes (unchanged since it was first written, so
  earlier measurements on it stay comparable);
- cold_start.jsonl: 60 worked `<think>` traces in the training phrasings, for the R1 recipe's cold start.
Answers are exact: integers, reduced fractions (a/b) or terminating decimals.
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from fractions import Fraction
from itertools import cycle
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo",
         "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vera", "Wei", "Yusuf", "Zoe"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "beads"]


def fmt(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # terminating decimal
        return format(float(x), "f").rstrip("0").rstrip(".")
    return f"{x.numerator}/{x.denominator}"


# A skill draws its numbers once and can be phrased several ways. Training problems use the `train` phrasings;
# held-out problems use the `heldout` phrasings, written with other sentence shapes, so no held-out problem
# shares a 13-word run with a training problem (main() checks it with decontaminate's own n-gram index).
@dataclass(frozen=True)
class Skill:
    kind: str
    level: str  # easy: one step with small numbers (the 135M default solves some); multi-step: the rest
    draw: Callable[[random.Random], tuple[dict, Fraction | int]]
    train: tuple[str, ...]
    heldout: tuple[str, ...]


def _person(r):
    return {"n": r.choice(NAMES), "it": r.choice(ITEMS)}


def d_add_small(r):
    v = {**_person(r), "a": r.randint(2, 12), "b": r.randint(2, 12)}
    return v, v["a"] + v["b"]


def d_sub_small(r):
    a = r.randint(4, 15)
    v = {**_person(r), "a": a, "b": r.randint(1, a - 1)}
    return v, v["a"] - v["b"]


def d_mul_small(r):
    v = {**_person(r), "a": r.randint(2, 6), "b": r.randint(2, 6)}
    return v, v["a"] * v["b"]


def d_div_small(r):
    b = r.randint(2, 5)
    v = {**_person(r), "b": b, "a": b * r.randint(2, 6)}
    return v, v["a"] // v["b"]


def d_arith(r):
    a, b = r.randint(2, 25), r.randint(2, 25)
    op, word = r.choice([("+", "plus"), ("-", "minus"), ("*", "times")])
    v = {"hi": max(a, b), "lo": min(a, b), "op": op, "word": word}
    return v, eval(f"{v['hi']} {op} {v['lo']}")  # noqa: S307 (our own digits)


def d_add(r):
    v = {**_person(r), "a": r.randint(13, 80), "b": r.randint(5, 60)}
    return v, v["a"] + v["b"]


def d_sub_mul(r):
    v = {**_person(r), "boxes": r.randint(2, 9), "per": r.randint(3, 12), "gave": r.randint(1, 10)}
    return v, v["boxes"] * v["per"] - v["gave"]


def d_money(r):
    v = {"n": r.choice(NAMES), "price": r.randint(2, 15), "qty": r.randint(2, 6)}
    v["paid"] = 50 if v["price"] * v["qty"] < 50 and r.random() < 0.5 else 100
    return v, v["paid"] - v["price"] * v["qty"]


def d_share(r):
    friends = r.randint(2, 8)
    v = {**_person(r), "friends": friends, "total": friends * r.randint(3, 15)}
    return v, v["total"] // friends


def d_fraction(r):
    den = r.choice([3, 4, 5, 6, 8])
    v = {"n": r.choice(NAMES), "num": r.randint(1, den - 1), "den": den, "days": r.randint(2, 5)}
    return v, Fraction(v["num"] * v["days"], den)


def d_percent(r):
    v = {"n": r.choice(NAMES), "price": r.choice([20, 40, 50, 60, 80, 120, 200, 250]),
         "off": r.choice([10, 15, 20, 25, 30, 50]), "thing": r.choice(["jacket", "bicycle", "lamp", "backpack"])}
    return v, Fraction(v["price"] * (100 - v["off"]), 100)


def d_rate(r):
    v = {"n": r.choice(NAMES), "speed": r.randint(3, 70), "hours": r.randint(2, 9)}
    return v, v["speed"] * v["hours"]


def d_age(r):
    a, b = r.sample(NAMES, 2)
    v = {"a": a, "b": b, "age": r.randint(5, 30), "diff": r.randint(2, 20), "years": r.randint(2, 15)}
    return v, v["age"] + v["diff"] + v["years"]


def d_average(r):
    scores = [r.randint(50, 100) for _ in range(r.choice([2, 4, 5]))]
    return {"n": r.choice(NAMES), "listed": ", ".join(map(str, scores))}, Fraction(sum(scores), len(scores))


def d_area(r):
    v = {"w": r.randint(2, 30), "h": r.randint(2, 30), "place": r.choice(["garden", "patio", "room", "field"])}
    return v, v["w"] * v["h"]


def d_perimeter(r):
    v = {"w": r.randint(2, 40), "h": r.randint(2, 40), "place": r.choice(["garden", "yard", "pool", "field"])}
    return v, 2 * (v["w"] + v["h"])


def d_negative(r):
    v = {"start": r.randint(-5, 10), "drop": r.randint(6, 25), "town": r.choice(["Oslo", "Lima", "Pune", "Kyiv"])}
    return v, v["start"] - v["drop"]


def d_equation(r):
    x, a, b = r.randint(-12, 15), r.randint(2, 9), r.randint(-20, 20)
    return {"a": a, "sign": "+" if b >= 0 else "-", "b": abs(b), "c": a * x + b}, x


def d_time(r):
    v = {"n": r.choice(NAMES), "h": r.randint(1, 4), "m": r.randint(5, 55)}
    return v, 60 * v["h"] + v["m"]


def d_remainder(r):
    per = r.randint(3, 9)
    v = {**_person(r), "per": per, "total": per * r.randint(2, 9) + r.randint(1, per - 1)}
    return v, v["total"] % per


SKILLS = [
    # one step, small numbers
    Skill("add", "easy", d_add_small,
          ("{n} has {a} {it} and finds {b} more. How many {it} does {n} have?",
           "{n} had {a} {it}. A friend gave {n} {b} more {it}. How many {it} does {n} have now?",
           "There are {a} {it} in a bag and {b} {it} on the table. How many {it} are there in total?"),
          ("Adding the {b} {it} found today to the {a} {it} already owned, what total does {n} end up with?",)),
    Skill("sub", "easy", d_sub_small,
          ("{n} has {a} {it} and gives away {b}. How many {it} are left?",
           "{n} had {a} {it} but lost {b} of them. How many {it} does {n} still have?",
           "A box holds {a} {it}. {n} takes {b} {it} out. How many {it} remain in the box?"),
          ("Out of a collection of {a} {it}, {n} hands {b} to a neighbour; find the number kept after that.",)),
    Skill("mul", "easy", d_mul_small,
          ("{n} has {a} bags with {b} {it} in each bag. How many {it} does {n} have?",
           "Each of {n}'s {a} friends brings {b} {it}. How many {it} do the friends bring altogether?",
           "{n} packs {a} rows of {it} with {b} {it} in every row. How many {it} is that?"),
          ("If every one of {a} jars contains exactly {b} {it}, what is the combined count of {it}?",)),
    Skill("div", "easy", d_div_small,
          ("{n} splits {a} {it} into {b} equal piles. How many {it} are in each pile?",
           "{a} {it} are shared evenly by {b} children. How many {it} does each child get?"),
          ("When {n} deals {a} {it} out fairly to a group of {b}, what does one member of the group receive?",)),
    Skill("arith", "easy", d_arith,
          ("What is {hi} {op} {lo}?", "Calculate {hi} {op} {lo}.", "Work out the value of {hi} {op} {lo}."),
          ("Please evaluate the expression {hi} {word} {lo} and state the resulting number as your answer.",)),
    # several steps or larger numbers
    Skill("add_big", "multi-step", d_add,
          ("{n} has {a} {it} and gets {b} more. How many {it} does {n} have now?",
           "A shop had {a} {it} in stock and received a delivery of {b} {it}. How many {it} does it have now?"),
          ("After a delivery of {b} {it} reaches a store that was holding {a}, what is its new stock of {it}?",)),
    Skill("sub_mul", "multi-step", d_sub_mul,
          ("{n} buys {boxes} boxes of {it} with {per} {it} in each box, then gives away {gave} {it}. "
           "How many {it} are left?",
           "{n} fills {boxes} boxes with {per} {it} each and later loses {gave} {it}. How many {it} remain?"),
          ("Picture {boxes} crates, every crate packed with {per} {it}; once {gave} {it} are removed, "
           "how many {it} are still there?",)),
    Skill("money", "multi-step", d_money,
          ("{n} buys {qty} notebooks at ${price} each and pays with a ${paid} bill. "
           "How many dollars of change does {n} get?",
           "Pens cost ${price} each. {n} buys {qty} pens and hands over ${paid}. What is the change in dollars?"),
          ("With ${paid} in hand, {n} purchases {qty} tickets priced at ${price} apiece; what amount in dollars "
           "should come back?",)),
    Skill("share", "multi-step", d_share,
          ("{n} shares {total} {it} equally among {friends} friends. How many {it} does each friend get?",
           "{total} {it} are divided equally into {friends} groups. How many {it} are in each group?"),
          ("Suppose {total} {it} must be split so that {friends} classmates each hold the same amount; "
           "what is one classmate's portion?",)),
    Skill("fraction", "multi-step", d_fraction,
          ("{n} eats {num}/{den} of a pizza on each of {days} days. How many pizzas does {n} eat in all? "
           "Give the answer as a fraction or a decimal.",
           "Every day for {days} days, {n} drinks {num}/{den} of a liter of juice. How many liters is that in "
           "total? Give the answer as a fraction or a decimal."),
          ("Over a stretch of {days} mornings {n} walks {num}/{den} of a mile each morning; what distance in miles "
           "is covered overall (fraction or decimal)?",)),
    Skill("percent", "multi-step", d_percent,
          ("A {thing} costs ${price}. {n} gets a {off}% discount. How many dollars does {n} pay?",
           "The price of a {thing} is ${price}, and it is on sale for {off}% off. What is the sale price in "
           "dollars?"),
          ("Once a {off} percent reduction is applied to a ${price} {thing}, what is the final cost in dollars "
           "for {n}?",)),
    Skill("rate", "multi-step", d_rate,
          ("{n} travels at {speed} km per hour for {hours} hours. How many km does {n} travel?",
           "A train moves at {speed} km per hour. How far does it go in {hours} hours, in km?"),
          ("Moving steadily at {speed} kilometers each hour, what distance in kilometers does a cyclist named "
           "{n} cover during {hours} hours?",)),
    Skill("age", "multi-step", d_age,
          ("{a} is {age} years old. {b} is {diff} years older than {a}. How old will {b} be in {years} years?",
           "{b} is {diff} years older than {a}, who is {age}. What will {b}'s age be {years} years from now?"),
          ("Today {a} turned {age}, and {b} was born {diff} years before {a}; what age will {b} reach "
           "after another {years} years?",)),
    Skill("average", "multi-step", d_average,
          ("{n} scored {listed} on tests. What is the average score?",
           "The test results of {n} were {listed}. What is the mean of these results?"),
          ("Find the arithmetic mean of the following quiz marks earned by {n} this term: {listed}.",)),
    Skill("area", "multi-step", d_area,
          ("A rectangular {place} is {w} m wide and {h} m long. What is its area in square meters?",
           "What is the area, in square meters, of a rectangle {w} m by {h} m?"),
          ("How many square meters does a {place} cover if its shape is a rectangle with sides of {w} meters "
           "and {h} meters?",)),
    Skill("perimeter", "multi-step", d_perimeter,
          ("A rectangular {place} is {w} m wide and {h} m long. What is its perimeter in meters?",
           "How many meters of fence go around a rectangle that is {w} m by {h} m?"),
          ("Walking once all the way around the edge of a {w} meter by {h} meter rectangular {place}, how many "
           "meters does one walk?",)),
    Skill("negative", "multi-step", d_negative,
          ("The temperature is {start} degrees and falls by {drop} degrees overnight. What is the new "
           "temperature?",
           "In {town} it was {start} degrees at noon. By midnight it was {drop} degrees colder. What was the "
           "temperature at midnight?"),
          ("A thermometer in {town} read {start} degrees before a cold front lowered it by {drop}; what does the "
           "thermometer read afterwards?",)),
    Skill("equation", "multi-step", d_equation,
          ("Solve for x: {a}x {sign} {b} = {c}.", "Find x if {a}x {sign} {b} = {c}."),
          ("Which value of the unknown x makes the equation {a}x {sign} {b} = {c} true? Give that value.",)),
    Skill("time", "multi-step", d_time,
          ("{n} practices piano for {h} hours and {m} minutes. How many minutes is that?",
           "A film lasts {h} hours and {m} minutes. How long is it in minutes?"),
          ("Converted entirely into minutes, how long is a trip by {n} that took {h} hours plus {m} minutes?",)),
    Skill("remainder", "multi-step", d_remainder,
          ("{n} puts {total} {it} into bags of {per}. How many {it} are left over?",
           "{total} {it} are packed {per} to a box. How many {it} do not fill a whole box?"),
          ("Grouping {total} {it} into sets of {per} as far as possible, {n} keeps the extras aside; how many "
           "extras are there?",)),
]


# Held-out set 2: the same skills phrased with templates the training set never uses (other sentence shapes,
# other nouns, other verbs), so a policy that only learned the training templates does not pass it.
def a_add(r):
    a, b = r.randint(1, 30), r.randint(1, 30)
    thing = r.choice(["birds on a fence", "cars in a lot", "fish in a tank", "chairs in a room"])
    return f"There are {a} {thing}. Then {b} more arrive. Count them all: how many are there?", a + b


def a_sub(r):
    a = r.randint(6, 40)
    b = r.randint(1, a - 1)
    return f"A shelf held {a} jars. Someone took {b} of them. What number of jars is still on the shelf?", a - b


def a_mul(r):
    rows_, per = r.randint(2, 9), r.randint(2, 9)
    return f"Chairs stand in {rows_} rows of {per}. What is the total number of chairs?", rows_ * per


def a_arith(r):
    a, b = r.randint(2, 30), r.randint(2, 30)
    word, op = r.choice([("the sum of", "+"), ("the difference between", "-"), ("the product of", "*")])
    hi, lo = max(a, b), min(a, b)
    return f"Compute {word} {hi} and {lo}.", eval(f"{hi} {op} {lo}")  # noqa: S307 (our own digits)


def a_two_step(r):
    start, gain, loss = r.randint(5, 30), r.randint(2, 20), r.randint(1, 5)
    return (f"A library starts the day with {start} books on a cart, receives {gain} returns, and then "
            f"shelves {loss} of them. How many books remain on the cart?"), start + gain - loss


ALT_TEMPLATES = [a_add, a_sub, a_mul, a_arith, a_two_step]


def make_alt(n: int, seed: int, prefix: str) -> list[dict]:
    r = random.Random(seed)
    rows, seen = [], set()
    for _attempt in range(100 * n):
        if len(rows) == n:
            break
        template = ALT_TEMPLATES[len(rows) % len(ALT_TEMPLATES)]
        question, answer = template(r)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"id": f"{prefix}-{len(rows):04d}", "prompt": question, "answer": fmt(Fraction(answer)),
                     "kind": template.__name__[2:],
                     "level": "easy" if template in ALT_TEMPLATES[:4] else "multi-step"})
    if len(rows) < n:
        raise RuntimeError(f"templates ran out of distinct problems after {len(rows)} of {n}")
    return rows


# easy and multi-step skills alternate, so any prefix of a file (say --limit 60) holds both kinds
EASY = [s for s in SKILLS if s.level == "easy"]
ORDER = [s for pair in zip([s for s in SKILLS if s.level != "easy"], cycle(EASY)) for s in pair]


def make(n: int, seed: int, prefix: str, split: str, avoid: set[str], index=None) -> list[dict]:
    """`split` picks the phrasings (train | heldout); with `index` (decontaminate's n-gram index of the training
    problems) a problem sharing an n-gram with a training problem is drawn again."""
    r = random.Random(seed)
    rows, seen = [], set(avoid)
    for _attempt in range(100 * n):
        if len(rows) == n:
            break
        skill = ORDER[len(rows) % len(ORDER)]
        phrasings = skill.train if split == "train" else skill.heldout
        k = r.randrange(len(phrasings))
        values, answer = skill.draw(r)
        question = phrasings[k].format(**values)
        if question in seen or (index is not None and _matches(index, question)):
            continue
        seen.add(question)
        rows.append({"id": f"{prefix}-{len(rows):04d}", "prompt": question, "answer": fmt(Fraction(answer)),
                     "kind": skill.kind, "level": skill.level, "phrasing": f"{split}-{k}"})
    if len(rows) < n:
        raise RuntimeError(f"skills ran out of distinct problems after {len(rows)} of {n}")
    return rows


# Worked solutions, for the R1 recipe's cold-start SFT traces (cold_start.jsonl): one short line of reasoning
# per skill, from the drawn values `v` and the gold answer `a` (as written in the files).
def _sum_listed(v):
    return sum(int(x) for x in v["listed"].split(", "))


SOLUTIONS: dict[str, Callable[[dict, str], str]] = {
    "add": lambda v, a: f"{v['a']} + {v['b']} = {a}.",
    "sub": lambda v, a: f"{v['a']} - {v['b']} = {a}.",
    "mul": lambda v, a: f"{v['a']} groups of {v['b']} make {v['a']} * {v['b']} = {a}.",
    "div": lambda v, a: f"{v['a']} split into {v['b']} equal parts is {v['a']} / {v['b']} = {a}.",
    "arith": lambda v, a: f"{v['hi']} {v['op']} {v['lo']} = {a}.",
    "add_big": lambda v, a: f"{v['a']} + {v['b']} = {a}.",
    "sub_mul": lambda v, a: f"First {v['boxes']} * {v['per']} = {v['boxes'] * v['per']}. "
                            f"Then {v['boxes'] * v['per']} - {v['gave']} = {a}.",
    "money": lambda v, a: f"The cost is {v['qty']} * {v['price']} = {v['qty'] * v['price']} dollars. "
                          f"The change is {v['paid']} - {v['qty'] * v['price']} = {a}.",
    "share": lambda v, a: f"{v['total']} / {v['friends']} = {a}.",
    "fraction": lambda v, a: f"{v['days']} * {v['num']}/{v['den']} = {v['days'] * v['num']}/{v['den']}, which is {a}.",
    "percent": lambda v, a: f"The price after {v['off']}% off is {v['price']} * (100 - {v['off']}) / 100 = {a}.",
    "rate": lambda v, a: f"Distance is speed times time: {v['speed']} * {v['hours']} = {a}.",
    "age": lambda v, a: f"{v['b']} is {v['age']} + {v['diff']} = {v['age'] + v['diff']} now, and in {v['years']} "
                        f"years {v['age'] + v['diff']} + {v['years']} = {a}.",
    "average": lambda v, a: f"The sum of {v['listed']} is {_sum_listed(v)}; dividing by the number of scores gives {a}.",
    "area": lambda v, a: f"Area is width times length: {v['w']} * {v['h']} = {a}.",
    "perimeter": lambda v, a: f"Perimeter is 2 * ({v['w']} + {v['h']}) = 2 * {v['w'] + v['h']} = {a}.",
    "negative": lambda v, a: f"{v['start']} - {v['drop']} = {a}.",
    "equation": lambda v, a: (f"Move the constant: {v['a']}x = {v['c']} {'-' if v['sign'] == '+' else '+'} {v['b']}"
                              f" = {int(a) * v['a']}, so x = {int(a) * v['a']} / {v['a']} = {a}."),
    "time": lambda v, a: f"{v['h']} hours is {v['h']} * 60 = {60 * v['h']} minutes; {60 * v['h']} + {v['m']} = {a}.",
    "remainder": lambda v, a: f"{v['total']} = {v['per']} * {v['total'] // v['per']} + {a}, so {a} are left over.",
}


def cold_start(n: int, seed: int, avoid_index) -> list[dict]:
    """R1-style cold-start SFT rows: a training-phrasing problem, then `<think>` reasoning and a boxed answer.
    Drawn with their own seed (so they are not the training set's rows), none sharing a 13-gram with a held-out
    problem (`avoid_index`)."""
    r = random.Random(seed)
    rows = []
    while len(rows) < n:
        i = len(rows)
        skill = ORDER[i % len(ORDER)]
        phrasing = skill.train[r.randrange(len(skill.train))]
        values, answer = skill.draw(r)
        if _matches(avoid_index, phrasing.format(**values)):
            continue
        reasoning = SOLUTIONS[skill.kind](values, fmt(Fraction(answer)))
        rows.append({"id": f"math-cold-start-{i:04d}", "prompt": phrasing.format(**values),
                     "completion": f"<think>\n{reasoning}\n</think>\nThe answer is \\boxed{{{fmt(Fraction(answer))}}}.",
                     "answer": fmt(Fraction(answer)), "kind": skill.kind, "level": skill.level})
    return rows


def ngram_index(rows: list[dict], n: int = 13):
    """decontaminate's own n-gram index of these problems (the rule `decontaminate --against` applies)."""
    sys.path.insert(0, str(HERE.parents[1]))
    from pipelines.hygiene.decontaminate import EvalSet, build_index

    return build_index([EvalSet("set", "make_math", "prompt", "", [r["id"] for r in rows], [r["prompt"] for r in rows])], n)


def _matches(index, text: str) -> bool:
    from pipelines.hygiene.decontaminate import find_matches

    return find_matches([text], index)[0] is not None


def shared_ngrams(train: list[dict], heldout: list[dict], n: int = 13) -> list[tuple[str, str]]:
    """(train id, matched words) for every training problem sharing an n-word run with a held-out problem."""
    from pipelines.hygiene.decontaminate import find_matches

    index = ngram_index(heldout, n)
    return [(row["id"], m.ngram) for row, m in zip(train, find_matches([r["prompt"] for r in train], index)) if m]


def main() -> None:
    train = make(800, seed=2026, prefix="math-train", split="train", avoid=set())
    index = ngram_index(train)
    heldout = make(200, seed=7, prefix="math-heldout", split="train", avoid={row["prompt"] for row in train},
                   index=index)
    phrasings = make(200, seed=13, prefix="math-heldout-phrasings", split="heldout", avoid=set(), index=index)
    alt = make_alt(120, seed=11, prefix="math-heldout-alt")
    overlap = shared_ngrams(train, heldout) + shared_ngrams(train, phrasings) + shared_ngrams(train, alt)
    if overlap:
        raise SystemExit(f"{len(overlap)} training problems share a 13-gram with a held-out one, e.g. {overlap[:3]}")
    held = heldout + phrasings + alt
    cold = cold_start(60, seed=99, avoid_index=ngram_index(held))
    overlap += shared_ngrams(cold, heldout) + shared_ngrams(cold, phrasings) + shared_ngrams(cold, alt)
    if overlap:
        raise SystemExit(f"cold-start traces share a 13-gram with a held-out problem, e.g. {overlap[:3]}")
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout), ("heldout_phrasings.jsonl", phrasings),
                       ("heldout_alt.jsonl", alt), ("cold_start.jsonl", cold)):
        with open(HERE / name, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(f"wrote {len(train)} train, {len(heldout)} held-out, {len(phrasings)} other-phrasing held-out and "
          f"{len(alt)} other-template held-out problems and {len(cold)} cold-start traces to {HERE}; no held-out problem shares a 13-gram with a training one")


if __name__ == "__main__":
    main()
