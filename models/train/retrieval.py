"""Long-range retrieval examples for the training stream and for evaluation (issue 11, item 2).

A retrieval example is a window of real Python source with two inserted lines: a *plant* that states
a value (a random identifier, number or string) early in the window, and a *query* late in the window
whose continuation is that value. The value cannot be guessed from nearby text, so predicting it
trains (or measures) reading back over the distance between the two.

The formats come in two disjoint sets so that retrieval measured on evaluation formats is not
recall of a memorised template:

- ``training_formats`` use single-quoted strings, bare numbers and comments;
- ``evaluation_formats`` use double-quoted strings only, and plant/query shapes the training set
  does not have (a class attribute, a ``dict(...)`` call, and the re-assignment probe that
  bench/HySparse.Fidelity has used: ``KEY_n = "xxxxxxxx"`` ... ``KEY_n = "``).

Everything is a pure function of a ``random.Random``, so a training step's batch is reproducible from
(seed, step) and the evaluator can regenerate its probes from a seed:

    from retrieval import evaluation_formats, make_example
    rng = random.Random(7)
    example = make_example(rng, text_window, 2048, evaluation_formats, position=0.1, distance=2048)
    example.data[example.value_start:example.value_end]   # the value bytes the model must predict

(position=0.1: the needle at 10 % of the window; distance=length: the query at the window's end.)
"""
import random
import string
from dataclasses import dataclass

LOWER_DIGITS = string.ascii_lowercase + string.digits
HEX = "0123456789abcdef"
WORDS = ("cache", "token", "secret", "buffer", "limit", "route", "label", "session", "prefix", "marker",
         "handle", "origin", "target", "vendor", "region", "channel", "digest", "anchor", "cursor", "ticket")


def _name(rng, upper):
    """A Python-looking name of one or two words, e.g. ``CACHE_ROUTE`` or ``session_tag7``."""
    parts = [rng.choice(WORDS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(WORDS))
    if rng.random() < 0.3:
        parts[-1] += str(rng.randrange(10))
    name = "_".join(parts)
    return name.upper() if upper else name


def _string_value(rng):
    """4-12 characters: lower-case letters and digits, hex, or a word with a number."""
    length = rng.randint(4, 12)
    kind = rng.random()
    if kind < 0.5:
        return "".join(rng.choice(LOWER_DIGITS) for _ in range(length))
    if kind < 0.8:
        return "".join(rng.choice(HEX) for _ in range(length))
    return f"{rng.choice(WORDS)}-{rng.randrange(10, 10000)}"


def _number_value(rng):
    return str(rng.randrange(10, 10 ** rng.randint(3, 7)))


# A format returns (plant line, query text before the value, value, text after the value). The query
# and the plant are whole lines; the value is what the model has to retrieve.

def _assert_constant(rng):
    name = _name(rng, upper=True)
    if rng.random() < 0.4:
        value = _number_value(rng)
        return f"{name} = {value}", f"assert {name} == ", value, ""
    value = _string_value(rng)
    return f"{name} = '{value}'", f"assert {name} == '", value, "'"


def _dict_lookup(rng):
    name, key = _name(rng, upper=rng.random() < 0.5), rng.choice(WORDS)
    other = rng.choice([w for w in WORDS if w != key])
    value = _string_value(rng)
    entries = [f"'{key}': '{value}'", f"'{other}': '{_string_value(rng)}'"]
    rng.shuffle(entries)
    return f"{name} = {{{', '.join(entries)}}}", f"if {name}['{key}'] != '", value, "':"


def _comment_reuse(rng):
    name = _name(rng, upper=False)
    value = _string_value(rng) if rng.random() < 0.7 else _number_value(rng)
    return f"# {name}: {value}", f"{name} = '", value, "'"


def _default_call(rng):
    function, argument = _name(rng, upper=False), rng.choice(WORDS)
    value = _string_value(rng)
    return f"def get_{function}({argument}='{value}'):", f"result = get_{function}({argument}='", value, "')"


def _reassign_double_quoted(rng):
    """bench/HySparse.Fidelity's probe: KEY_n = "8 chars of a-z0-9", asked by repeating the assignment."""
    name = f"KEY_{rng.randrange(100, 1000)}"
    value = "".join(rng.choice(LOWER_DIGITS) for _ in range(8))
    return f'{name} = "{value}"', f'{name} = "', value, '"'


def _class_attribute(rng):
    cls, attribute = "".join(w.capitalize() for w in (rng.choice(WORDS), rng.choice(WORDS))), rng.choice(WORDS)
    value = _string_value(rng)
    return f'class {cls}: {attribute} = "{value}"', f'    return {cls}.{attribute} or "', value, '"'


def _dict_call(rng):
    name, key = _name(rng, upper=False), rng.choice(WORDS)
    value = _string_value(rng)
    return f'{name} = dict({key}="{value}")', f'{name}.setdefault("{key}", "', value, '")'


training_formats = {"assert_constant": _assert_constant, "dict_lookup": _dict_lookup,
                    "comment_reuse": _comment_reuse, "default_call": _default_call}
evaluation_formats = {"reassign_double_quoted": _reassign_double_quoted, "class_attribute": _class_attribute,
                      "dict_call": _dict_call}


@dataclass
class Example:
    data: bytes          # exactly `length` bytes
    value_start: int     # data[value_start:value_end] is the value in the query
    value_end: int
    plant_start: int     # where the plant line starts
    value: bytes         # the planted value (data[value_start:value_end])
    format: str

    @property
    def distance(self):
        """Bytes from the plant line to the value: how far back the model has to read."""
        return self.value_start - self.plant_start


def _line_start(text, offset):
    """The start of the first line at or after `offset` (or `offset` if there is no newline)."""
    newline = text.find(b"\n", offset)
    return offset if newline < 0 or newline + 1 >= len(text) else newline + 1


def _indent(text, offset, most=8):
    """The line's leading spaces (at most `most`, so the inserted lines fit the slack make_example keeps)."""
    end = offset
    while end < len(text) and end - offset < most and text[end:end + 1] == b" ":
        end += 1
    return text[offset:end]


def make_example(rng, text, length, formats, position=None, distance=None):
    """One example of `length` bytes built from `text` (real source, at least `length` bytes): the
    plant is inserted at a line start at relative `position` (0-1; random when None) and the query so
    that the value begins about `distance` bytes after the plant (random between the shortest
    possible and the end of the window when None). Inserted lines take the indentation of the line
    they are inserted before, so they read like the surrounding code."""
    name = rng.choice(sorted(formats))
    plant, ask, value, tail = formats[name](rng)
    plant_bytes_len = len(plant) + 1
    query_len = len(ask) + len(value) + len(tail) + 1
    room = length - plant_bytes_len - query_len - 16  # indentation of both lines fits in the slack
    if room < 8:
        raise ValueError(f"a window of {length} bytes is too short for a retrieval example")
    at = int((rng.random() * 0.5 if position is None else position) * room)
    at = min(_line_start(text, at), room)
    plant_line = _indent(text, at) + plant.encode() + b"\n"
    earliest = at + len(plant_line)
    if distance is None:
        gap = rng.randint(0, room - at)
    else:
        gap = max(0, min(room - at, distance - len(plant_line)))
    query_at = min(_line_start(text, at + gap), room)
    indent = _indent(text, query_at)
    query = indent + (ask + value + tail).encode() + b"\n"
    data = text[:at] + plant_line + text[at:query_at] + query + text[query_at:]
    value_start = earliest + (query_at - at) + len(indent) + len(ask)
    return Example(data[:length], value_start, value_start + len(value), at, value.encode(), name)


def _splice(text, length, insertions):
    """`text` with each (offset, line) of `insertions` inserted at its offset (ties keep list order),
    cut to `length` bytes. Returns the bytes and where each inserted line starts in them, in the order
    of `insertions`."""
    order = sorted(range(len(insertions)), key=lambda k: (insertions[k][0], k))
    pieces, starts, cursor, size = [], [0] * len(insertions), 0, 0
    for k in order:
        offset, line = insertions[k]
        pieces.append(text[cursor:offset])
        size += offset - cursor
        cursor = offset
        starts[k] = size
        pieces.append(line)
        size += len(line)
    pieces.append(text[cursor:])
    return b"".join(pieces)[:length], starts


DISTANCES = ("positions", "uniform")


def make_dense_example(rng, text, length, formats, pairs, distances="positions"):
    """A window of `length` bytes with `pairs` plant/query pairs at random positions and distances
    (each query after its own plant; pairs interleave): more long-range signal per byte than one pair
    per window (models/train/README.md, "Why retrieval is not learned yet", for what it did and did
    not achieve). Returns (data, [(value_start, value_end, value)]) with every value whole inside the
    window.

    `distances` says how a pair is placed. "positions": the plant uniform in the first 80 % of the
    window, the query uniform after it — distances then crowd near zero (3 % of the pairs are farther
    apart than 80 % of the window, 19 % farther than half), which left the far needle the trained models' weakest. "uniform":
    the distance uniform between 0 and the window, the plant uniform where that distance fits, so
    every distance up to the training context is trained as often."""
    if distances not in DISTANCES:
        raise ValueError(f"distances must be one of {', '.join(DISTANCES)}, not {distances!r}")
    lines = [formats[rng.choice(sorted(formats))](rng) for _ in range(pairs)]
    inserted = sum(len(plant) + len(ask) + len(value) + len(tail) + 2 + 2 * 8 for plant, ask, value, tail in lines)
    room = length - inserted
    if room < 8 * pairs:
        raise ValueError(f"a window of {length} bytes is too short for {pairs} retrieval pairs")
    insertions, answers = [], []   # answers: (index of the query line, value offset inside it, value)
    for plant, ask, value, tail in lines:
        if distances == "uniform":
            gap = rng.randint(0, room)
            at = min(_line_start(text, rng.randint(0, room - gap)), room)
            query_at = min(_line_start(text, at + gap), room)
        else:
            at = min(_line_start(text, int(rng.random() * 0.8 * room)), room)
            query_at = min(_line_start(text, rng.randint(at, room)), room)
        indent = _indent(text, query_at)
        insertions.append((at, _indent(text, at) + plant.encode() + b"\n"))
        answers.append((len(insertions), len(indent) + len(ask), value.encode()))
        insertions.append((query_at, indent + (ask + value + tail).encode() + b"\n"))
    data, starts = _splice(text, length, insertions)
    return data, sorted((starts[k] + at, starts[k] + at + len(value), value) for k, at, value in answers)


def make_echo_example(rng, text, length, echoes):
    """A window of `length` bytes in which `echoes` spans of its own text (32-128 bytes from a line
    start) are repeated later, each copy inserted at a line start after its original: code quoting
    code, as duplicated lines in real source do. Predicting a copy past its first bytes takes reading
    back to the original (an induction head), the mechanism every retrieval format needs
    (models/train/README.md, "Why retrieval is not learned yet"). The spans are real text, not a
    plant/query format, so the evaluation formats stay unseen. Returns (data, number of copies)."""
    insertions = []
    budget = length - 16
    for _ in range(echoes):
        size = rng.randint(32, 128)
        budget -= size + 1
        if budget < length // 4:
            break
        start = _line_start(text, int(rng.random() * 0.5 * budget))
        span = text[start:start + size].split(b"\0")[0]
        if len(span) < 16:
            continue
        at = min(_line_start(text, rng.randint(start + len(span), max(start + len(span), budget))), budget)
        if at < start + len(span):
            continue
        insertions.append((at, _indent(text, at) + span.lstrip(b" ") + b"\n"))
    return _splice(text, length, insertions)[0], len(insertions)


COPY_ALPHABET = b"abcdefghijklmnopqrstuvwxyz"


def make_copy_example(rng, length, low=24, high=48, gap=0, text=None, text_share=0.0, halves=False):
    """A row of random lowercase strings, each written twice (`s s t t u u ...`, each string
    `low`-`high` bytes), cut to `length`: the second copy of each string is predictable only by finding
    the first and reading on (an induction head), and its offset varies, so a fixed positional lookup
    does not solve it. With `gap` > 0, 0-`gap` other random letters stand between the two copies
    (`s x s t y t ...`), so the copy must be found at distances up to high + gap. The 8-layer model
    learns the adjacent form (gap 0) at 64 rows per step in ~1,000 steps (models/train/README.md,
    "Why retrieval is not learned yet"). With `text` and `text_share` > 0, that share of the strings
    are random pieces of `text` instead of letters: a copy of Python source, so the mechanism learned
    on letters is also exercised on the bytes the copy test and the retrieval probes use. With `halves`,
    the first half of the row is a run of strings and the second half the same strings in a random
    order: every byte of the second half is a copy, from 0 to nearly a whole row back."""
    def unit():
        size = rng.randint(low, high)
        if text is not None and text_share > 0 and rng.random() < text_share and len(text) > size:
            at = rng.randrange(0, len(text) - size)
            return bytes(text[at:at + size])
        return bytes(rng.choice(COPY_ALPHABET) for _ in range(size))

    if halves:
        first = []
        while sum(map(len, first)) < (length + 1) // 2:
            first.append(unit())
        second = list(first)
        rng.shuffle(second)
        return (b"".join(first) + b"".join(second))[:length]
    out = bytearray()
    while len(out) < length:
        piece = unit()
        filler = bytes(rng.choice(COPY_ALPHABET) for _ in range(rng.randint(0, gap))) if gap > 0 else b""
        out += piece + filler + piece
    return bytes(out[:length])


def mix_rows(rows, seed, share, formats=None, pairs_per_kb=0.0, spans=None, echo_share=0.0, echoes_per_kb=2.0,
             copy_share=0.0, copy_gap=0, copy_text=0.0, copy_halves=False, distances="positions"):
    """Replaces a `share` of the byte rows (each a window of real text) by retrieval examples of the
    same length, chosen and built from `seed` alone: one plant/query pair per row, or with
    `pairs_per_kb` > 0 that many pairs per 1,024 bytes of row (make_dense_example). Returns the new
    rows and how many pairs were planted; when `spans` is a list, appends (row, value_start,
    value_end) for every planted value (a trainer can weigh those bytes). With `echo_share` > 0 that
    share of rows first gets `echoes_per_kb` repeated spans of its own text (make_echo_example);
    retrieval pairs then go into the echoed text. With `copy_share` > 0 that share of rows is
    replaced by repeated random strings instead (make_copy_example, `copy_gap` letters at most between
    the copies; with `copy_text` > 0 that share of the strings are pieces of the row's own text; with
    `copy_halves` a run of strings followed by the same strings shuffled). `distances` is
    make_dense_example's placement of the pairs."""
    rng = random.Random(seed)
    echo_rng = random.Random(seed ^ 0x5EED)   # its own stream: without echoes the rows are as before
    copy_rng = random.Random(seed ^ 0xC0B1)   # likewise for copy rows
    formats = training_formats if formats is None else formats
    out, planted = [], 0
    for index, row in enumerate(rows):
        if copy_share > 0 and copy_rng.random() < copy_share:
            out.append(make_copy_example(copy_rng, len(row), gap=copy_gap, text=row, text_share=copy_text,
                                         halves=copy_halves))
            continue
        if echo_share > 0 and echo_rng.random() < echo_share:
            row = make_echo_example(echo_rng, row, len(row), max(1, round(echoes_per_kb * len(row) / 1024)))[0]
        if rng.random() < share:
            pairs = max(1, round(pairs_per_kb * len(row) / 1024)) if pairs_per_kb > 0 else 0
            if pairs:
                while True:   # short rows take fewer pairs (still a pure function of the seed)
                    try:
                        data, values = make_dense_example(rng, row, len(row), formats, pairs, distances)
                        break
                    except ValueError:
                        if pairs == 1:
                            raise
                        pairs -= 1
            else:
                example = make_example(rng, row, len(row), formats)
                data, values = example.data, [(example.value_start, example.value_end, example.value)]
            out.append(data)
            planted += len(values)
            if spans is not None:
                spans.extend((index, start, end) for start, end, _ in values)
        else:
            out.append(row)
    return out, planted


def selfcheck(trials=2000):
    """Every example has the requested length and holds its value, whole, where it says."""
    filler = b"".join(b"    " * (i % 4) + b"x = compute(%d)\n" % i for i in range(400))
    rng = random.Random(0)
    for i in range(trials):
        length = rng.choice([256, 512, 2048])
        formats = training_formats if i % 2 else evaluation_formats
        start = rng.randrange(0, len(filler) - length)
        example = make_example(rng, filler[start:start + length], length, formats)
        assert len(example.data) == length, (example.format, len(example.data))
        assert example.data[example.value_start:example.value_end] == example.value, example
        assert 0 <= example.plant_start < example.value_start < example.value_end <= length, example
    for i in range(trials // 4):
        length = rng.choice([512, 2048])
        start = rng.randrange(0, len(filler) - length)
        data, count = make_echo_example(rng, filler[start:start + length], length, length // 512)
        assert len(data) == length, len(data)
    for i in range(trials // 4):
        length = rng.choice([512, 2048])
        start = rng.randrange(0, len(filler) - length)
        distances = DISTANCES[i % 2]
        data, values = make_dense_example(rng, filler[start:start + length], length, training_formats, length // 256,
                                          distances)
        assert len(data) == length and len(values) == length // 256, (len(data), len(values), distances)
        for value_start, value_end, value in values:
            assert data[value_start:value_end] == value, (data, value_start, value)


if __name__ == "__main__":
    selfcheck()
    # Show one example of each format (what the stream and the evaluator produce).
    filler = b"".join(b"    x = compute(%d)\n" % i for i in range(40))
    for formats in (training_formats, evaluation_formats):
        for name in sorted(formats):
            example = make_example(random.Random(name), filler, 400, {name: formats[name]})
            print(f"--- {name}: value {example.value!r}, distance {example.distance}")
            print(example.data.decode())
