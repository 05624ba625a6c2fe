"""Write the built-in math word problems (train + held-out) with exact gold answers.

Problems come from templates written for prefsmith, with numbers drawn from a fixed seed, so the set is
reproducible: `python data/math/make_math.py` rewrites train.jsonl, heldout.jsonl and heldout_alt.jsonl (the
same skills phrased with templates the training set never uses) byte for byte.
Answers are exact: integers, reduced fractions (a/b) or terminating decimals.
"""
from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

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


def t_add(r):
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(3, 60), r.randint(2, 40)
    return f"{n} has {a} {it} and gets {b} more. How many {it} does {n} have now?", a + b


def t_sub_mul(r):
    n, it = r.choice(NAMES), r.choice(ITEMS)
    boxes, per, gave = r.randint(2, 9), r.randint(3, 12), r.randint(1, 10)
    return (f"{n} buys {boxes} boxes of {it} with {per} {it} in each box, then gives away {gave} {it}. "
            f"How many {it} are left?"), boxes * per - gave


def t_money(r):
    n = r.choice(NAMES)
    price, qty, paid = r.randint(2, 15), r.randint(2, 6), 100
    return (f"{n} buys {qty} notebooks at ${price} each and pays with a ${paid} bill. "
            f"How many dollars of change does {n} get?"), paid - price * qty


def t_share(r):
    n, it = r.choice(NAMES), r.choice(ITEMS)
    friends = r.randint(2, 8)
    total = friends * r.randint(3, 15)
    return f"{n} shares {total} {it} equally among {friends} friends. How many {it} does each friend get?", total // friends


def t_fraction(r):
    n = r.choice(NAMES)
    den = r.choice([3, 4, 5, 6, 8])
    num = r.randint(1, den - 1)
    pizza = r.randint(2, 5)
    return (f"{n} eats {num}/{den} of a pizza on each of {pizza} days. How many pizzas does {n} eat in all? "
            "Give the answer as a fraction or a decimal."), Fraction(num * pizza, den)


def t_percent(r):
    n = r.choice(NAMES)
    price = r.choice([20, 40, 50, 60, 80, 120, 200, 250])
    off = r.choice([10, 15, 20, 25, 30, 50])
    return f"A jacket costs ${price}. {n} gets a {off}% discount. How many dollars does {n} pay?", Fraction(price * (100 - off), 100)


def t_rate(r):
    n = r.choice(NAMES)
    speed, hours = r.randint(3, 70), r.randint(2, 9)
    return f"{n} travels at {speed} km per hour for {hours} hours. How many km does {n} travel?", speed * hours


def t_age(r):
    a, b = r.sample(NAMES, 2)
    age, diff, years = r.randint(5, 30), r.randint(2, 20), r.randint(2, 15)
    return f"{a} is {age} years old. {b} is {diff} years older than {a}. How old will {b} be in {years} years?", age + diff + years


def t_average(r):
    n = r.choice(NAMES)
    scores = [r.randint(50, 100) for _ in range(r.choice([2, 4, 5]))]
    listed = ", ".join(map(str, scores))
    return f"{n} scored {listed} on tests. What is the average score?", Fraction(sum(scores), len(scores))


def t_area(r):
    w, h = r.randint(2, 30), r.randint(2, 30)
    return f"A rectangular garden is {w} m wide and {h} m long. What is its area in square meters?", w * h


def t_negative(r):
    start, drop = r.randint(-5, 10), r.randint(6, 25)
    return f"The temperature is {start} degrees and falls by {drop} degrees overnight. What is the new temperature?", start - drop


def t_equation(r):
    x, a, b = r.randint(-12, 15), r.randint(2, 9), r.randint(-20, 20)
    sign = "+" if b >= 0 else "-"
    return f"Solve for x: {a}x {sign} {abs(b)} = {a * x + b}.", x


def e_add(r):
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(1, 9), r.randint(1, 9)
    return f"{n} has {a} {it} and finds {b} more. How many {it} does {n} have?", a + b


def e_sub(r):
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a = r.randint(4, 12)
    b = r.randint(1, a - 1)
    return f"{n} has {a} {it} and gives away {b}. How many {it} are left?", a - b


def e_mul(r):
    n, it = r.choice(NAMES), r.choice(ITEMS)
    bags, per = r.randint(2, 5), r.randint(2, 5)
    return f"{n} has {bags} bags with {per} {it} in each bag. How many {it} does {n} have?", bags * per


def e_arith(r):
    a, b = r.randint(2, 20), r.randint(2, 20)
    op = r.choice(["+", "-", "*"])
    return f"What is {max(a, b)} {op} {min(a, b)}?", eval(f"{max(a, b)} {op} {min(a, b)}")  # noqa: S307 (our own digits)


# one-step problems with small numbers: the embedded 135M default model solves some of these, so its rollouts
# get mixed rewards (and therefore preference pairs); the multi-step ones are for stronger policies
EASY = [e_add, e_sub, e_mul, e_arith]
MULTI_STEP = [t_add, t_sub_mul, t_money, t_share, t_fraction, t_percent, t_rate, t_age, t_average, t_area,
              t_negative, t_equation]
# alternate: multi-step, easy, multi-step, easy ...
TEMPLATES = [t for pair in zip(MULTI_STEP, EASY * 3) for t in pair]


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


def make(n: int, seed: int, prefix: str, avoid: set[str], templates=None) -> list[dict]:
    templates = templates or TEMPLATES
    r = random.Random(seed)
    rows, seen = [], set(avoid)
    for _attempt in range(100 * n):
        if len(rows) == n:
            break
        template = templates[len(rows) % len(templates)]
        question, answer = template(r)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"id": f"{prefix}-{len(rows):04d}", "prompt": question, "answer": fmt(Fraction(answer)),
                     "kind": template.__name__[2:],
                     "level": "easy" if template in EASY or template in ALT_TEMPLATES[:4] else "multi-step"})
    if len(rows) < n:
        raise RuntimeError(f"templates ran out of distinct problems after {len(rows)} of {n}")
    return rows


def main() -> None:
    train = make(360, seed=2026, prefix="math-train", avoid=set())
    heldout = make(120, seed=7, prefix="math-heldout", avoid={row["prompt"] for row in train})
    alt = make(120, seed=11, prefix="math-heldout-alt", avoid=set(), templates=ALT_TEMPLATES)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout), ("heldout_alt.jsonl", alt)):
        with open(HERE / name, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(f"wrote {len(train)} train, {len(heldout)} held-out and {len(alt)} other-template held-out problems "
          f"to {HERE}")


if __name__ == "__main__":
    main()
