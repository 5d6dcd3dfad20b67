"""English text normaliser: writes text the way a person reads it aloud.

Numbers, years and decades, dates, times, money, percentages, fractions, phone numbers, numbers
with units, Roman numerals, abbreviations, symbols and initialisms become words; the result is
lower case with whitespace collapsed. Number words come from ``num2words`` (cardinal, ordinal and
year modes); the rest is a fixed sequence of regular-expression passes, so the output depends on
the input text alone (no state, no randomness, no downloads).

Readings chosen where English is ambiguous (each is covered by ``tests/utils/normalizer_cases.tsv``):

* US English: cardinals without "and" (``250`` -> "two hundred fifty"), compound numbers hyphenated.
* ``3/4/2024`` and ``3/4/24`` are month/day/year (March fourth); a first field above 12 is read as
  the day (``25/12/2024`` -> December twenty-fifth). ``3/4`` without a year is a fraction.
* A four-digit number from 1100 to 2099 without separators is a year ("nineteen eighty-seven"),
  unless a quantity word precedes it (``about``, ``over``, ``than`` ...) or a plural noun follows it
  (``1500 people``); write ``1,500`` to force the cardinal.
* ``555-0199``, ``(555) 123-4567``, ``+44 20 7946 0958`` are read digit by digit in groups, zero as
  "oh"; a toll-free ``800`` area code is "eight hundred".
* ``10:30`` is a time when the minutes are below 60 and the hour at most 24 ("ten thirty";
  ``14:00`` -> "fourteen hundred"); other ``a:b`` pairs are ratios ("three to one").
* ``St.`` and ``Dr.`` are "saint"/"doctor" before a capitalised name, "street"/"drive" after one.
* Roman numerals after a counting word (``Chapter IV``, ``World War II``, ``Super Bowl LVII``) are
  cardinals; after a capitalised name (``Henry VIII``) "the" + ordinal. A lone ``I`` or ``X`` after a
  name is left alone (the pronoun, "Malcolm X").
* A measure after "a"/"an" is an adjective and takes the singular ("a 2TB drive" -> "a two terabyte
  drive"); otherwise units agree with the number ("1 kg", "1.5 kilograms").
* Upper-case words are read letter by letter when they have no vowel or are known initialisms
  (``FBI``, ``BBC``, ``U.S.``); otherwise as a word (``NASA``, ``STOP``).

What cannot be verbalised (``*``, ``/`` between words, ``^`` ...) is kept as its characters; the
tokenizer then maps them to ``<unk>`` and counts them, so nothing is dropped silently.

Why not a WFST normaliser (measured on a 2-core CPU): ``nemo-text-processing`` 1.2.0
installs from pip alone (pynini ships wheels) but brings about 1.1 GB of dependencies (pandas,
transformers, ...); it compiles its English grammars once in 26.5 s (9 MB cache), then starts in
about 1.5 s and normalises about 30 plain sentences/s (85/s on short ones), against about 4,000/s
here (``bench/normalizer_speed.py``). It also left ``250MB``, ``Henry VIII`` and phone numbers
misread. A corpus of 100,000 lines would take about an hour with it and under a minute with this
module, which needs nothing beyond ``num2words`` and ``unidecode``, already required.

Bump :data:`NORMALIZER_VERSION` whenever any output changes: it is saved with the tokenizer in every
checkpoint, so a model is given text normalised the way its training text was.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from num2words import num2words
from unidecode import unidecode

NORMALIZER_VERSION = "en-2.0"

# --------------------------------------------------------------------------------------------
# Number words
# --------------------------------------------------------------------------------------------

_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _tidy(words: str) -> str:
    # num2words writes British "one hundred and five" with commas; a US reader says neither.
    return words.replace(",", "").replace(" and ", " ")


def cardinal(n: int) -> str:
    """``1234`` -> "one thousand two hundred thirty-four"; negative numbers get "minus"."""
    return _tidy(num2words(n))


def ordinal(n: int) -> str:
    """``21`` -> "twenty-first"."""
    return _tidy(num2words(n, to="ordinal"))


def digits(s: str, zero: str = "zero") -> str:
    """``"0199"`` -> "zero one nine nine" (``zero="oh"`` for phone numbers)."""
    return " ".join(zero if c == "0" else _DIGIT_WORDS[int(c)] for c in s if c.isdigit())


def number(s: str) -> str:
    """A written number (``1,234.56``, ``0.5``, ``.5``, ``007``) in words; decimals digit by digit."""
    s = s.replace(",", "")
    whole, dot, frac = s.partition(".")
    if len(whole) > 1 and whole.startswith("0") or len(whole) > 15:
        out = digits(whole)  # identifiers and codes, not quantities
    else:
        out = cardinal(int(whole)) if whole else ""
    if dot:
        out = f"{out} point {digits(frac)}".strip()
    return out


def year(n: int) -> str:
    """``1987`` -> "nineteen eighty-seven", ``2005`` -> "two thousand five", ``1905`` -> "nineteen oh five"."""
    if 2000 <= n <= 2009 or n < 1000:
        return cardinal(n)
    return _tidy(num2words(n, to="year")).replace("oh-", "oh ")


def _two_digit_year(s: str) -> str:
    """The last two digits of a year: ``"05"`` -> "oh five", ``"18"`` -> "eighteen", ``"00"`` -> "hundred"."""
    if s == "00":
        return "hundred"
    return f"oh {_DIGIT_WORDS[int(s[1])]}" if s[0] == "0" else cardinal(int(s))


def plural_words(words: str) -> str:
    """"nineteen ninety" -> "nineteen nineties", "eighteen hundred" -> "eighteen hundreds"."""
    head, sep, last = words.rpartition(" ")
    pre, hy, last = last.rpartition("-")
    if last.endswith("y"):
        last = last[:-1] + "ies"
    elif last.endswith("x"):
        last += "es"
    else:
        last += "s"
    return head + sep + pre + hy + last


def _fraction(num: int, den: int) -> str:
    """``3/4`` -> "three quarters", ``1/2`` -> "one half", ``5/8`` -> "five eighths"."""
    if den == 1:
        return cardinal(num)
    if den == 2:
        name = "half" if num == 1 else "halves"
    elif den == 4:
        name = "quarter" if num == 1 else "quarters"
    elif den <= 100:
        name = ordinal(den).removeprefix("one ") + ("" if num == 1 else "s")  # "seven hundredths"
    else:
        return f"{cardinal(num)} over {cardinal(den)}"
    return f"{cardinal(num)} {name}"


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# A number that does not continue a word, another number or a decimal.
_NUM_START = r"(?<![\w.,])"

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"sept": "september"}
_MONTH_RE = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
             r"|Jan\.?|Feb\.?|Mar\.?|Apr\.?|Jun\.?|Jul\.?|Aug\.?|Sept?\.?|Oct\.?|Nov\.?|Dec\.?)")


def _month(token: str) -> str:
    t = token.rstrip(".").lower()
    return t if t in _MONTHS else _MONTH_ABBR[t]


# currency symbol -> (major singular, major plural, minor singular, minor plural)
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "", ""),
}
_CODE_SIGNS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
_SCALES = {"thousand": "thousand", "million": "million", "billion": "billion", "trillion": "trillion",
           "k": "thousand", "K": "thousand", "m": "million", "M": "million", "mn": "million",
           "b": "billion", "B": "billion", "bn": "billion", "tn": "trillion"}

# unit as written -> (singular, plural). Case matters (``m`` metre, ``M`` is not a unit here).
_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "mi": ("mile", "miles"), "ft": ("foot", "feet"),
    "yd": ("yard", "yards"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "L": ("liter", "liters"), "l": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"), "m/s": ("meter per second", "meters per second"),
    "KB": ("kilobyte", "kilobytes"), "kB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"),
    "kbps": ("kilobit per second", "kilobits per second"), "Mbps": ("megabit per second", "megabits per second"),
    "Gbps": ("gigabit per second", "gigabits per second"),
    "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"), "W": ("watt", "watts"), "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"), "V": ("volt", "volts"), "mA": ("milliamp", "milliamps"),
    "ms": ("millisecond", "milliseconds"), "sec": ("second", "seconds"), "secs": ("second", "seconds"),
    "min": ("minute", "minutes"), "mins": ("minute", "minutes"), "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"), "dB": ("decibel", "decibels"), "in.": ("inch", "inches"),
    "tbsp": ("tablespoon", "tablespoons"), "tsp": ("teaspoon", "teaspoons"), "gal": ("gallon", "gallons"),
    "qt": ("quart", "quarts"), "sq ft": ("square foot", "square feet"), "sq mi": ("square mile", "square miles"),
    "km²": ("square kilometer", "square kilometers"), "m²": ("square meter", "square meters"),
    "°C": ("degree celsius", "degrees celsius"), "°F": ("degree fahrenheit", "degrees fahrenheit"),
    "° C": ("degree celsius", "degrees celsius"), "° F": ("degree fahrenheit", "degrees fahrenheit"),
    "°": ("degree", "degrees"),
}
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))

# Upper-case words said letter by letter although they have a vowel.
_INITIALISMS = {
    "FBI", "CIA", "USA", "UK", "EU", "UN", "CEO", "CFO", "CTO", "DNA", "RNA", "AI", "API", "CPU", "GPU",
    "ID", "IOU", "UFO", "IRA", "IRS", "MRI", "URL", "USB", "ATM", "ABC", "UCLA", "NYU", "USC", "EPA",
    "FDA", "FAA", "IMF", "UAE", "IQ", "IP", "EA", "UAW", "OECD", "IBM", "AOL", "UPS", "ESPN", "AP",
    "AA", "EEG", "ECG", "EKG", "ICU", "ER", "OS", "IOC", "ACLU", "AFL", "AU", "EV", "IPO", "OJ", "UV",
}
# Short upper-case words that are words, not initialisms ("I AM", "NOT", "OK" is handled apart).
_CAPS_WORDS = {"THE", "AND", "YOU", "NOT", "ALL", "ARE", "WAS", "BUT", "FOR", "HIS", "HER", "ONE", "OUT", "NOW",
               "NEW", "OLD", "BIG", "YES", "HEY", "WOW", "OH", "NO", "GO", "SO", "TO", "DO", "WE", "HE", "ME",
               "BE", "IS", "IT", "IN", "ON", "AT", "AN", "AS", "OR", "IF", "OF", "UP", "BY", "MY", "AM", "ANY",
               "CAN", "GET", "GOT", "HAD", "HAS", "HIM", "HOW", "ITS", "LET", "MAN", "OUR", "OWN", "SAY", "SEE",
               "SHE", "TOO", "TWO", "USE", "WAY", "WHO", "BOY", "DID", "END", "FAR", "FEW", "GOD", "OFF", "PUT",
               "RUN", "SAT", "SET", "SIX", "TEN", "TOP", "WAR", "WIN", "YET", "AGO", "AIR", "ART", "ASK",
               "BAD", "BED", "BOX", "CAR", "CAT", "DOG", "EAT", "EYE", "FUN", "HAT", "HOT", "JOB", "LAW", "LOW",
               "MEN", "MOM", "DAD", "PAY", "RED", "SUN", "TRY", "WET", "ZOO", "ACE", "ICE", "AGE", "ADD", "EGO",
               "OAK", "OIL", "OLE", "OPT", "ORE", "AH", "EH", "HA", "HI", "LO", "MA", "PA", "UH", "UM",
               "YA", "YO", "OUCH", "BOO", "RAM", "ROM", "PIN", "SIM", "MIX"}
# Upper-case words without vowels that are nevertheless said as words.
_WORDS_WITHOUT_VOWELS = {"NYMPH", "SHH", "HMM", "BRR", "TSK", "PSST", "MYTH", "GYM", "SKY", "TRY", "WHY",
                         "FLY", "DRY", "SPY", "CRY", "MY", "BY", "SHY", "SYNC"}
_MIXED_CASE = {"PhD": "p h d", "Ph.D.": "p h d", "OK": "okay", "iOS": "i o s", "TVs": "t v's"}

# Counting words before a Roman numeral that is then read as a cardinal ("Chapter IV").
_ROMAN_CUES = (r"chapter|chapters|part|parts|volume|vol\.|book|act|scene|section|war|episode|phase|"
               r"article|title|type|class|level|stage|round|grade|bowl|apollo|step|appendix|unit|psalm|"
               r"canto|tier|category|mark|mk\.?|division|league|rule|figure|fig\.|no\.|number|series|"
               r"edition|season|page|track")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
_ROMAN_VALID = re.compile(r"^(?:C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})$")

# Quantity words before a four-digit number that make it a count, not a year.
_QUANTITY_CUES = {"about", "over", "than", "nearly", "approximately", "some", "exactly", "almost", "only",
                  "just", "least", "total", "another", "additional", "extra", "roughly", "under", "number",
                  "#", "no"}
# Words that make a bare "7/4" a date rather than a fraction.
_DATE_CUES = {"on", "by", "until", "till", "since", "before", "after", "from", "due", "dated"}
# Words that precede years (they win over the plural-noun test: "In 1999 voters ...").
_YEAR_CUES = {"in", "since", "from", "until", "till", "by", "during", "circa", "c.", "ca.", "year", "before",
              "after", "early", "late", "mid", "spring", "summer", "autumn", "fall", "winter", "born", "died",
              "founded", "established", "est.", "class", "between", "through", "throughout", "in the year"}
_IRREGULAR_PLURALS = {"people", "men", "women", "children", "feet", "teeth", "mice", "geese", "police",
                      "cattle", "sheep", "fish", "deer", "troops", "staff"}
_NOT_PLURAL_NOUNS = {"was", "is", "has", "does", "saw", "as", "his", "its", "this", "thus", "yes", "plus",
                     "marks", "sees", "gives", "brings", "makes", "becomes", "remains", "proves", "shows",
                     "comes", "goes", "begins", "ends", "starts", "gets", "says", "seems", "always", "perhaps",
                     "hers", "ours", "yours", "whereas", "unless", "across", "less", "princess", "process",
                     "access", "success", "congress", "address", "census", "campus", "bonus", "status"}


# --------------------------------------------------------------------------------------------
# Passes: each replaces what it recognises with lower-case words (no digits), so later passes
# never read a number twice.
# --------------------------------------------------------------------------------------------

_Pass = tuple[re.Pattern, Callable[[re.Match], str]]


_SENTENCE_STARTERS = {"The", "A", "An", "He", "She", "It", "They", "We", "I", "You", "This", "That", "These",
                      "Those", "But", "And", "So", "Then", "In", "On", "At", "There", "His", "Her", "Their",
                      "Our", "My", "Its", "What", "When", "Where", "Why", "How", "If", "As", "After", "Before",
                      "Yet", "Still", "Now", "However", "Meanwhile", "Later", "Today", "Tomorrow"}


def _sentence_end_after(m: re.Match) -> bool:
    """The text after the match ends the sentence: end of text, a closing quote or bracket, or a word
    that usually starts a sentence ("in the U.S. He said" but "the U.S. Army")."""
    rest = m.string[m.end():]
    if not rest.strip() or rest[:1] in "\"')":
        return True
    nxt = re.match(r"\s+([A-Za-z]+)", rest)
    return bool(nxt) and nxt.group(1) in _SENTENCE_STARTERS


def _keep_period(m: re.Match, words: str) -> str:
    """For an abbreviation whose period was consumed: give the period back when it also ends the sentence."""
    return words + "." if m.group(0).endswith(".") and _sentence_end_after(m) else words


def _spaced(m: re.Match, words: str) -> str:
    """Words for a match, with a space where the match touches a letter ("MP3" -> "MP three")."""
    s = m.string
    left = " " if m.start() > 0 and s[m.start() - 1].isalnum() else ""
    right = " " if m.end() < len(s) and s[m.end()].isalnum() else ""
    return left + words + right


# ---- e-mail addresses and web addresses ----

_SEPARATOR_WORDS = {".": "dot", "@": "at", "_": "underscore", "-": "dash", "+": "plus", "/": "slash", ":": "colon"}


def _spell_address(addr: str) -> str:
    out = []
    for tok in re.findall(r"[A-Za-z]+|\d+|[^A-Za-z\d]", addr):
        if tok.isdigit():
            out.append(digits(tok))
        elif tok.isalpha():
            out.append(_letters(tok) if tok.isupper() and len(tok) > 1 and not _has_vowel(tok) else tok.lower())
        elif tok in _SEPARATOR_WORDS:
            out.append(_SEPARATOR_WORDS[tok])
        else:
            out.append(tok)
    return " ".join(out)


def _email(m: re.Match) -> str:
    return _spell_address(m.group(0))


def _url(m: re.Match) -> str:
    addr = re.sub(r"^https?://", "", m.group(0)).rstrip("/")
    host, slash, path = addr.partition("/")
    www = host.lower().startswith("www.")
    spoken = ("w w w dot " if www else "") + _spell_address(host[4:] if www else host)
    return spoken + (" slash " + _spell_address(path) if slash and path else "")


# ---- phone numbers ----

def _phone_group(g: str) -> str:
    if len(g) == 3 and g[1:] == "00" and g[0] != "0":
        return cardinal(int(g))  # toll-free "eight hundred"
    return digits(g, zero="oh")


def _phone(m: re.Match) -> str:
    groups = [g for g in re.split(r"[^\d]+", m.group("body")) if g]
    spoken = [_phone_group(g) if i or not m.group("plus") else digits(g, zero="oh") for i, g in enumerate(groups)]
    if m.group("plus"):
        spoken[0] = "plus " + spoken[0]
    return ", ".join(spoken)


# ---- dates ----

def _day_ok(d: str) -> bool:
    return 1 <= int(d) <= 31


def _month_day(m: re.Match) -> str:
    if not _day_ok(m.group("day")):
        return m.group(0)
    out = f"{_month(m.group('month'))} {ordinal(int(m.group('day')))}"
    if m.group("year"):
        out += f"{m.group('comma') or ''} {year(int(m.group('year')))}"
    return out


def _month_year(m: re.Match) -> str:
    return f"{_month(m.group('month'))}{m.group('comma') or ''} {year(int(m.group('year')))}"


def _day_month(m: re.Match) -> str:
    if not _day_ok(m.group("day")):
        return m.group(0)
    before = m.string[:m.start()].rstrip().lower()
    the = "" if before.endswith("the") else "the "
    out = f"{the}{ordinal(int(m.group('day')))} of {_month(m.group('month'))}"
    if m.group("year"):
        out += f"{m.group('comma') or ''} {year(int(m.group('year')))}"
    return out


def _numeric_date(m: re.Match) -> str:
    a, b, y = int(m.group(1)), int(m.group(2)), m.group(3)
    month, day = (a, b) if a <= 12 else (b, a)  # month/day; a first field over 12 can only be a day
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    spoken_year = year(int(y)) if len(y) == 4 else _two_digit_year(y)
    return f"{_MONTHS[month - 1]} {ordinal(day)} {spoken_year}"


def _iso_date(m: re.Match) -> str:
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    return f"{_MONTHS[mo - 1]} {ordinal(d)} {year(y)}"


# ---- times ----

def _minutes(mm: str) -> str:
    return f"oh {_DIGIT_WORDS[int(mm[1])]}" if mm[0] == "0" else cardinal(int(mm))


def _clock_ampm(m: re.Match) -> str:
    h = int(m.group("h"))
    if not 1 <= h <= 12 and not (h == 0 and m.group("mm")):
        return m.group(0)
    out = cardinal(h)
    mm = m.group("mm")
    if mm and mm != "00":
        if int(mm) >= 60:
            return m.group(0)
        out += " " + _minutes(mm)
    out += " " + m.group("ap").lower() + " m"
    return _spaced(m, _keep_period(m, out))


def _clock(m: re.Match) -> str:
    hh, mm, ss = m.group(1), m.group(2), m.group(3)
    h, minute = int(hh), int(mm)
    if h > 24 or minute >= 60 or (ss and int(ss) >= 60):
        return f"{number(hh)} to {number(mm)}"  # a ratio or score: 3:1, 16:9
    if minute == 0:
        if 1 <= h <= 12 and not hh.startswith("0"):
            out = f"{cardinal(h)} o'clock"
        else:
            out = f"{'oh ' if hh.startswith('0') and h else ''}{cardinal(h)} hundred"
    else:
        out = f"{cardinal(h)} {_minutes(mm)}"
    if ss:
        out += f" and {cardinal(int(ss))} second" + ("" if int(ss) == 1 else "s")
    return out


# ---- money ----

def _money(m: re.Match) -> str:
    sym = m.group("sym") or m.group("sym2")
    major1, major_n, minor1, minor_n = _CURRENCIES.get(sym, ("cent", "cents", "", ""))
    amount = m.group("amt").replace(",", "")
    minus = "minus " if m.group("neg") else ""
    scale = m.group("scale_word") or m.group("scale_abbr")
    if scale:
        return _spaced(m, f"{minus}{number(amount)} {_SCALES[scale]} {major_n}")
    whole, _, frac = amount.partition(".")
    if sym == "¢":
        return f"{minus}{number(amount)} {'cent' if amount == '1' else 'cents'}"
    if frac and (len(frac) > 2 or not minor1):
        return f"{minus}{number(amount)} {major_n}"
    major = int(whole or "0")
    minor = int((frac + "00")[:2]) if frac else 0
    parts = []
    if major or not minor:
        parts.append(f"{cardinal(major)} {major1 if major == 1 else major_n}")
    if minor:
        parts.append(f"{cardinal(minor)} {minor1 if minor == 1 else minor_n}")
    return _spaced(m, minus + " and ".join(parts))


# ---- years and decades ----

def _decade4(m: re.Match) -> str:
    return plural_words(year(int(m.group(1))))


def _decade2(m: re.Match) -> str:
    return plural_words(cardinal(int(m.group(1))))


def _year_short_range(m: re.Match) -> str:
    return f"{year(int(m.group(1)))} to {_two_digit_year(m.group(2))}"


def _era(m: re.Match) -> str:
    n = int(m.group("n"))
    era = " ".join(m.group("era").replace(".", "").lower())
    return f"{year(n)} {era}" if m.group("n") else m.group(0)


def _era_before(m: re.Match) -> str:
    return f"a d {year(int(m.group(1)))}"


def _previous_word(m: re.Match) -> str:
    before = re.findall(r"[\w#.']+", m.string[max(0, m.start() - 40):m.start()])
    return before[-1].lower().rstrip("'") if before else ""


def _next_word(m: re.Match) -> str:
    after = re.match(r"\s+([A-Za-z]+)", m.string[m.end():])
    return after.group(1) if after else ""


def _bare_four_digits(m: re.Match) -> str:
    n = int(m.group(0))
    prev = _previous_word(m)
    nxt = _next_word(m)
    is_year = 1100 <= n <= 2099
    if prev in _YEAR_CUES:
        is_year = True
    elif prev in _QUANTITY_CUES:
        is_year = False
    elif nxt in _IRREGULAR_PLURALS or (nxt.islower() and nxt.endswith("s") and not nxt.endswith("ss")
                                       and nxt not in _NOT_PLURAL_NOUNS):
        is_year = False  # "1500 people"
    return year(n) if is_year else number(m.group(0))


# ---- numbers with units, percentages, fractions ----

def _signed(sign: str | None, amount: str) -> str:
    return ("minus " if sign else "") + number(amount)


def _unit(m: re.Match) -> str:
    one, many = _UNITS[m.group("unit")]
    amount = m.group("amt")
    # "a 2TB drive", "a 90° angle": a measure used as an adjective takes the singular
    attributive = _previous_word(m) in ("a", "an") and not m.group("neg")
    words = f"{_signed(m.group('neg'), amount)} {one if amount == '1' or attributive else many}"
    return _spaced(m, words)


def _percent(m: re.Match) -> str:
    return _spaced(m, f"{_signed(m.group('neg'), m.group('amt'))} percent")


def _mixed_fraction(m: re.Match) -> str:
    whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if num >= den or den == 0:
        return m.group(0)
    frac = "a half" if (num, den) == (1, 2) else ("a quarter" if (num, den) == (1, 4) else _fraction(num, den))
    return f"{cardinal(whole)} and {frac}"


def _feet_inches(m: re.Match) -> str:
    return f"{cardinal(int(m.group(1)))} foot {cardinal(int(m.group(2)))}"


_SPECIAL_SLASHES = {"24/7": "twenty-four seven", "9/11": "nine eleven", "50/50": "fifty fifty",
                    "20/20": "twenty twenty", "4/20": "four twenty"}


def _slash_number(m: re.Match) -> str:
    if m.group(0) in _SPECIAL_SLASHES:
        return _SPECIAL_SLASHES[m.group(0)]
    num, den = int(m.group(1)), int(m.group(2))
    if _previous_word(m) in _DATE_CUES and 1 <= num <= 12 and 1 <= den <= 31:
        return f"{_MONTHS[num - 1]} {ordinal(den)}"  # "on 7/4": a date, month/day
    if den == 0:
        return f"{number(m.group(1))} slash {number(m.group(2))}"
    return _fraction(num, den)


def _ordinal(m: re.Match) -> str:
    n = int(m.group(1).replace(",", ""))
    suffix = m.group(2).lower()
    expected = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    if suffix != expected:
        return m.group(0)  # "1th": not an ordinal; read the parts
    return _spaced(m, ordinal(n))


# ---- Roman numerals ----

def _roman_value(s: str) -> int:
    total = 0
    for a, b in zip(s, s[1:] + " "):
        v = _ROMAN_VALUES[a]
        total += -v if b != " " and _ROMAN_VALUES[b] > v else v
    return total


def _roman_after_cue(m: re.Match) -> str:
    numeral = m.group("num")
    if not _ROMAN_VALID.match(numeral):
        return m.group(0)
    cue = m.group("cue")
    return f"{cue}{m.group('sp')}{cardinal(_roman_value(numeral))}"


def _roman_after_name(m: re.Match) -> str:
    numeral = m.group("num")
    if not _ROMAN_VALID.match(numeral) or numeral in ("I", "X"):
        return m.group(0)
    if len(numeral) == 1 and re.match(r"\.\s+[A-Z]", m.string[m.end():]):
        return m.group(0)  # a middle initial: "Mary V. Smith"
    return f"{m.group('name')} the {ordinal(_roman_value(numeral))}"


# ---- abbreviations ----

def _capitalised_name_before(m: re.Match) -> bool:
    """The word before the match is capitalised and not the first word of a sentence, or is a number."""
    before = m.string[:m.start()]
    found = re.search(r"(^|[.!?]\s+|\s)([\w'-]+)\s*$", before)
    if not found:
        return False
    word = found.group(2)
    sentence_initial = found.group(1) == "" and found.start(2) == 0 or found.group(1).strip() != ""
    if word[0].isdigit() or word.rpartition("-")[2] in _ORDINAL_WORDS:
        return True  # "42nd St.", "Fifth Ave."
    return word[0].isupper() and not sentence_initial


_ORDINAL_WORDS = {ordinal(n) for n in range(1, 20)} | {ordinal(n * 10) for n in range(2, 10)} | {"hundredth"}
_ORDINAL_WORDS |= {w.capitalize() for w in _ORDINAL_WORDS}


def _street_or_title(m: re.Match) -> str:
    abbr = m.group("abbr")
    title, street = {"St": ("saint", "street"), "Dr": ("doctor", "drive"), "Ft": ("fort", "fort"),
                     "Mt": ("mount", "mount")}[abbr]
    name_follows = bool(re.match(r"\s+[A-Z]", m.string[m.end():]))
    if name_follows and not _capitalised_name_before(m):
        return title
    return _keep_period(m, street)


_ALWAYS_TITLES = {"Mr": "mister", "Mrs": "missus", "Ms": "miz", "Messrs": "messieurs"}
_TITLES = {"Prof": "professor", "Gov": "governor",
           "Sen": "senator", "Rep": "representative", "Gen": "general", "Lt": "lieutenant", "Capt": "captain",
           "Sgt": "sergeant", "Col": "colonel", "Rev": "reverend", "Hon": "honorable", "Pres": "president",
           "Supt": "superintendent", "Cpl": "corporal", "Adm": "admiral", "Cmdr": "commander"}
_TRAILING = {"Jr": "junior", "Sr": "senior", "Inc": "incorporated", "Ltd": "limited", "Co": "company",
             "Corp": "corporation", "Bros": "brothers", "Dept": "department", "Ave": "avenue", "Blvd": "boulevard",
             "Rd": "road", "Ln": "lane", "Hwy": "highway", "Pl": "place", "Sq": "square", "Ct": "court",
             "Univ": "university", "Assn": "association", "Intl": "international", "Govt": "government",
             "etc": "et cetera", "approx": "approximately", "dept": "department", "Mfg": "manufacturing"}
_BEFORE_NUMBER = {"No": "number", "no": "number", "Nos": "numbers", "nos": "numbers", "p": "page",
                  "pp": "pages", "Fig": "figure", "fig": "figure", "Vol": "volume", "vol": "volume",
                  "Ch": "chapter", "ch": "chapter", "Ex": "example", "Eq": "equation", "eq": "equation",
                  "Sec": "section", "sec": "section", "Pt": "part", "Apt": "apartment", "Rm": "room",
                  "Art": "article", "art": "article", "Ps": "psalm"}
_LATIN = {"e.g.": "for example", "eg.": "for example", "i.e.": "that is", "ie.": "that is",
          "a.k.a.": "also known as", "aka": "also known as", "cf.": "compare", "viz.": "namely",
          "et al.": "and others", "vs.": "versus", "vs": "versus", "v.": "versus", "w/": "with", "w/o": "without",
          "a.m.": "a m", "p.m.": "p m", "and/or": "and or", "he/she": "he or she", "his/her": "his or her",
          "him/her": "him or her", "s/he": "she or he"}


def _latin(m: re.Match) -> str:
    key = m.group(0).lower()
    words = _LATIN.get(key) or _LATIN[key.rstrip(".")]
    if key == "et al." or (key.endswith(".") and not m.string[m.end():].strip()):
        return _keep_period(m, words)  # the period also ends the sentence
    return words


def _title(m: re.Match) -> str:
    return _TITLES[m.group(1)]


def _trailing(m: re.Match) -> str:
    return _keep_period(m, _TRAILING[m.group(1)])


def _before_number(m: re.Match) -> str:
    return _BEFORE_NUMBER[m.group(1)] + " "


# ---- symbols and initialisms ----

def _has_vowel(word: str) -> bool:
    return bool(re.search(r"[AEIOUaeiou]", word))


def _letters(word: str) -> str:
    return " ".join(word.lower())


def _caps_ampersand(m: re.Match) -> str:
    return f"{_letters(m.group(1))} and {_letters(m.group(2))}"


def _dotted_initialism(m: re.Match) -> str:
    letters = _letters(m.group(0).replace(".", ""))
    return _keep_period(m, letters)


def _shouting(text: str) -> bool:
    """Most words of the text are upper case: it is emphasis, not a list of initialisms."""
    words = re.findall(r"[A-Za-z]{2,}", text)
    return len(words) >= 3 and sum(w.isupper() for w in words) > len(words) / 2


def _upper_word(m: re.Match) -> str:
    word, plural = m.group(1), m.group(2) or ""
    if word in _WORDS_WITHOUT_VOWELS:
        return word.lower() + plural
    spelled = _letters(word) + ("'s" if plural else "")
    if word in _INITIALISMS or not _has_vowel(word.replace("Y", "")):
        return spelled
    if len(word) <= 3 and word not in _CAPS_WORDS and not _shouting(m.string):
        return spelled  # "NSA", "NBA": short upper-case words are mostly initialisms
    return word.lower() + plural


# --------------------------------------------------------------------------------------------
# The pass list, in order
# --------------------------------------------------------------------------------------------

_KEEP_NON_ASCII = {"£", "€", "¥", "¢", "°", "²", "³"}
_FRACTION_CHARS = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅛": "1/8",
                   "⅜": "3/8", "⅝": "5/8", "⅞": "7/8"}
_SIGN_WORDS = {"\u00d7": " times ", "\u00f7": " divided by ", "\u00b1": " plus or minus ", "\u221e": " infinity ",
               "\u2248": " approximately ", "\u2260": " is not equal to ", "\u2264": " less than or equal to ",
               "\u2265": " greater than or equal to "}
_LONE_SIGNS = {"£": " pounds ", "€": " euros ", "¥": " yen ", "¢": " cents "}
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")


def _ascii(m: re.Match) -> str:
    c = m.group(0)
    if c in _KEEP_NON_ASCII:
        return c
    if c in _FRACTION_CHARS:
        return " " + _FRACTION_CHARS[c]
    if c == "\u2212":  # minus sign
        return "-"
    if c in _SIGN_WORDS:
        return _SIGN_WORDS[c]
    return unidecode(c) or c  # a character unidecode cannot spell is kept (and counted), not dropped


def _c(pattern: str, flags: int = 0) -> re.Pattern:
    return re.compile(pattern, flags)


_CURRENCY_SYMS = r"[$€£¥]"
_SCALE_WORDS = r"thousand|million|billion|trillion"
_SCALE_ABBR = r"mn|bn|tn|[kKmMbB]"

# Groups of passes in order; a group marked True can only match text that has a digit, and is
# skipped for the many sentences that have none.
_PASSES: list[tuple[bool, list[_Pass]]] = [(False, [
    # addresses first: their dots, dashes and digits are not sentences or numbers
    (_c(r"[\w.+-]+@[A-Za-z\d-]+(?:\.[A-Za-z\d-]+)+"), _email),
    (_c(r"(?:https?://)?www\.[\w-]+(?:\.[\w-]+)+(?:/[\w./-]*)?|https?://[\w-]+(?:\.[\w-]+)+(?:/[\w./-]*)?"
        r"|\b[A-Za-z][\w-]*\.(?:com|org|net|edu|gov|io)\b(?:/[\w./-]*)?"), _url),
    # comparison signs before numbers are read before the numbers
    (_c(r"(?<![<>=-])<(?=\s?-?\d)|\s<\s"), lambda m: " less than "),
    (_c(r"(?<![<>=-])>(?=\s?-?\d)|\s>\s"), lambda m: " greater than "),
    (_c(r"~(?=\s?\d)"), lambda m: " about "),
]), (True, [
    # phone numbers: +CC groups, 1-800-..., (555) 123-4567, 555-123-4567, 555.123.4567, 555-0199
    (_c(r"(?<![\w+])(?P<plus>\+)(?P<body>\d{1,3}(?:[\s.-]\(?\d{1,4}\)?){2,5})(?![\w-])"), _phone),
    (_c(r"(?<![\w+-])(?P<plus>)(?P<body>0\d{2,4}[\s-]\d{3,4}[\s-]\d{4})(?![\w-]|\.\d)"), _phone),
    (_c(r"(?<![\w+-])(?P<plus>)(?P<body>1-\d{3}-\d{3}-\d{4}|\(\d{3}\)\s?\d{3}-\d{4}|\d{3}([-.])\d{3}\3\d{4}"
        r"|\d{3}-\d{4})(?![\w-]|\.\d)"), _phone),
    # dates
    (_c(r"\b(\d{4})-(\d{2})-(\d{2})\b"), _iso_date),
    (_c(r"(?<![\w/.])(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?![\w/])"), _numeric_date),
    (_c(rf"\b(?P<month>{_MONTH_RE})(?<!May\.)\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b"
        r"(?:(?P<comma>,?)\s+(?P<year>\d{4})\b)?"), _month_day),
    (_c(rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<month>{_MONTH_RE})(?![\w])"
        r"(?:(?P<comma>,?)\s+(?P<year>\d{4})\b)?"), _day_month),
    (_c(rf"\b(?P<month>{_MONTH_RE})(?P<comma>,?)\s+(?P<year>\d{{4}})\b"), _month_year),
    # decades, eras, year ranges
    (_c(r"(?<![\w.,])(\d{3}0)'?s\b"), _decade4),
    (_c(r"(?<![\w.,])'?([1-9]0)'?s\b"), _decade2),
    (_c(r"(?<![\w.,-])(1[1-9]\d\d|20\d\d)\s?-\s?(\d\d)(?![\w]|[.,]\d)"), _year_short_range),
    (_c(r"(?<![\w.,])(?P<n>\d{1,4})\s?(?P<era>BCE|BC|CE|AD|B\.C\.E\.|B\.C\.|C\.E\.|A\.D\.)(?![A-Za-z])"), _era),
    (_c(r"\b(?:AD|A\.D\.)\s?(\d{1,4})\b"), _era_before),
    # ranges between numbers: "5-10" -> "5 to 10" (the numbers are read below); "$5-10" -> "5 to $10"
    (_c(rf"([$€£¥])({_NUM})\s?[-–]\s?\1?(?=\d)"), lambda m: f"{m.group(2)} to {m.group(1)}"),
    (_c(r"(?<=\d)\s?-\s?(?=[$€£]?\d)|(?<=\d)\s?–\s?(?=[$€£]?-?\d)"), lambda m: " to "),
    (_c(r"(?<=\d%)\s?-\s?(?=\d)"), lambda m: " to "),
    (_c(r"(?<=[AaPp][Mm])\s?[-–]\s?(?=\d)|(?<=°[CF])\s?[-–]\s?(?=-?\d)"), lambda m: " to "),
    # times
    (_c(r"(?<![\w:.])(?P<h>\d{1,2})(?:[:.](?P<mm>\d{2}))?\s?(?P<ap>[AaPp])\.?[Mm](?![A-Za-z])\.?"), _clock_ampm),
    (_c(r"(?<![\w:.])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\w:]|\.\d)"), _clock),
    (_c(r"(?<![\w:.])(\d+):(\d+)(?![\w:]|\.\d)"), lambda m: f"{number(m.group(1))} to {number(m.group(2))}"),
    # money (ISO codes first become their signs)
    (_c(rf"\b(USD|EUR|GBP|JPY)\s?(?={_NUM})"), lambda m: _CODE_SIGNS[m.group(1)]),
    (_c(rf"(?<![\w.,])({_NUM})\s?(USD|EUR|GBP|JPY)\b"), lambda m: _CODE_SIGNS[m.group(2)] + m.group(1)),
    (_c(rf"(?<![\w.])(?P<neg>-)?(?P<sym>{_CURRENCY_SYMS})\s?(?P<amt>{_NUM})(?:\s+(?P<scale_word>{_SCALE_WORDS})\b"
        rf"|(?P<scale_abbr>{_SCALE_ABBR})(?![A-Za-z]))?"), _money),
    (_c(rf"{_NUM_START}(?P<neg>-)?(?P<amt>{_NUM})(?:\s+(?P<scale_word>{_SCALE_WORDS}))?\s?(?P<sym2>[€£¢])"
        r"(?P<sym>)(?P<scale_abbr>)"), _money),
    # numbers with units, percentages
    (_c(r"(?<![\w.])(\d+)\s?(?:ft|feet)\.?\s+(\d+)\s?in(?:ches)?\b\.?"),
     lambda m: f"{cardinal(int(m.group(1)))} feet {cardinal(int(m.group(2)))} inch{'' if m.group(2) == '1' else 'es'}"),
    (_c(rf"(?<![\w.,])(?P<neg>-)?(?P<amt>{_NUM})\s?%"), _percent),
    (_c(rf"(?<![\w.,])(?P<neg>-)?(?P<amt>{_NUM})\s?(?P<unit>{_UNIT_RE})(?<!in\.)(?![A-Za-z\d/])(?:\.(?=\s+[a-z\d]))?"), _unit),
    (_c(rf"(?<![\w.,])(?P<neg>-)?(?P<amt>{_NUM})\s?(?P<unit>in\.)(?=\s+[a-z\d]|\s*$)"), _unit),
    (_c(r"(?<=[a-z])/(?=(?:month|mo|year|yr|day|week|wk|hour|hr|night|person|head|unit|piece|kg|lb|liter)\b)"),
     lambda m: " per "),
    # 6'2" (feet and inches), 2x, 4x4
    (_c(r"(?<![\w.])(\d)'\s?(\d{1,2})(?:\"|'')"), _feet_inches),
    (_c(rf"(?<![\w.,])({_NUM})\s?[x×]\s?({_NUM})(?![\w.])"), lambda m: f"{number(m.group(1))} by {number(m.group(2))}"),
    (_c(rf"(?<![\w.,])({_NUM})x(?![\w])"), lambda m: f"{number(m.group(1))} times"),
    (_c(r"(?<![\w.,])911(?![\w]|[.,]\d)"), lambda m: "nine one one"),
    # fractions and slashed numbers
    (_c(r"(?<![\w/.])(\d+)\s+(\d+)/(\d+)(?![\w/])"), _mixed_fraction),
    (_c(r"(?<![\w/.])(\d+)/(\d+)(?![\w/])"), _slash_number),
    # ordinals
    (_c(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th|ST|ND|RD|TH)\b"), _ordinal),
    # four-digit numbers: years or counts
    (_c(r"(?<![\w.,-])\d{4}(?![\w%]|[.,]\d)"), _bare_four_digits),
]), (False, [
    # Roman numerals
    (_c(r"\bWW(?:II|2)\b"), lambda m: "world war two"),
    (_c(r"\bWW(?:I|1)\b"), lambda m: "world war one"),
    (_c(rf"\b(?P<cue>(?i:{_ROMAN_CUES}))(?P<sp>\s+)(?P<num>[IVXLC]+)\b(?!['’-])"), _roman_after_cue),
    (_c(r"\b(?P<name>[A-Z][a-z]+)\s+(?P<num>[IVX]+)\b(?![.'’-]\w)"), _roman_after_name),
    # abbreviations
    (_c(r"(?<![\w.])(?:e\.g\.|i\.e\.|a\.k\.a\.|et al\.|eg\.|ie\.|cf\.|viz\.|vs\.?|(?-i:v\.)(?=\s)|w/o|w/(?=\s)|"
        r"and/or|he/she|his/her|him/her|s/he)(?!\w)", re.IGNORECASE), _latin),
    (_c(r"\b(?P<abbr>St|Dr|Ft|Mt)\b\.?"), _street_or_title),
    (_c(r"\b(" + "|".join(_TITLES) + r")\b\.?(?=\s+[A-Z])"), _title),
    (_c(r"\b(" + "|".join(_ALWAYS_TITLES) + r")\.|\b(" + "|".join(_ALWAYS_TITLES) + r")\b(?=\s+[A-Z])"),
     lambda m: _ALWAYS_TITLES[m.group(1) or m.group(2)]),
    (_c(r"\b(" + "|".join(_TRAILING) + r")\.(?!\w)"), _trailing),
    (_c(r"\b(" + "|".join(_BEFORE_NUMBER) + r")\.\s?(?=#?\d)"), _before_number),
    # symbols
    (_c(r"\b([A-Z]{1,3})&([A-Z]{1,3})\b"), _caps_ampersand),
    (_c(r"\s*&\s*"), lambda m: " and "),
    (_c(r"#(?=\d)"), lambda m: " number "),
    (_c(r"(?<![\w#])#(?=[A-Za-z])"), lambda m: "hashtag "),
    (_c(r"(?<![\w@])@(?=\w)|(?<=\s)@(?=\s)"), lambda m: "at "),  # "@jack", "chips @ noon"
    (_c(r"\+\+"), lambda m: " plus plus"),
    (_c(r"(?<![\w+])\+(?=\s?\d)"), lambda m: "plus "),
    (_c(r"(?<=[\w\s])\+(?=[\s\w])|(?<=[A-Za-z])\+"), lambda m: " plus "),
    (_c(r"\s?=\s?"), lambda m: " equals "),
    (_c(r"(?<![\w.,])%|(?<=\s)%"), lambda m: " percent "),
    (_c(r"°"), lambda m: " degrees "),
    (_c(r"²"), lambda m: " squared "),
    (_c(r"³"), lambda m: " cubed "),
    (_c(r"[\[{]"), lambda m: "("),
    (_c(r"[\]}]"), lambda m: ")"),
]), (True, [
    # what is left of numbers
    (_c(r"(?<![\w.])-(?=\.?\d)"), lambda m: "minus "),
    (_c(r"\d{10,}"), lambda m: _spaced(m, digits(m.group(0)))),  # identifiers, card numbers
    (_c(_NUM), lambda m: _spaced(m, number(m.group(0)))),
]), (False, [
    # initialisms
    (_c(r"Ph\.D\.|PhD|\bOK\b|\biOS\b|\bTVs\b"), lambda m: _MIXED_CASE[m.group(0)]),
    (_c(r"(?<![\w.])(?:[A-Za-z]\.){2,}(?!\w)"), _dotted_initialism),
    (_c(r"\b([A-Z]{2,6})(s)?\b"), _upper_word),
])]
_DIGIT_RE = re.compile(r"\d")

_SPACE_RE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([.,!?;:)])")
_SPACE_AFTER_PAREN_RE = re.compile(r"\(\s+")


def normalize(text: str) -> str:
    """English text -> the lower-case words a person says for it (see the module docstring).

    >>> normalize("The file is 250MB; call 555-0199 at 10:30am.")
    'the file is two hundred fifty megabytes; call five five five, oh one nine nine at ten thirty a m.'
    """
    text = _NON_ASCII_RE.sub(_ascii, text)
    has_digit = _DIGIT_RE.search(text) is not None  # passes only ever remove digits
    for needs_digit, passes in _PASSES:
        if needs_digit and not has_digit:
            continue
        for pattern, replace in passes:
            text = pattern.sub(replace, text)
    text = _NON_ASCII_RE.sub(lambda m: _LONE_SIGNS.get(m.group(0)) or unidecode(m.group(0)) or m.group(0), text)
    text = text.lower()
    text = _SPACE_RE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    text = _SPACE_AFTER_PAREN_RE.sub("(", text)
    return text


def plain(text: str) -> str:
    """The text with only the trivial normalisation: ASCII, lower case, whitespace collapsed."""
    return _SPACE_RE.sub(" ", unidecode(text).lower()).strip()


def verbalises(text: str) -> bool:
    """Whether the normaliser rewrites anything in ``text`` beyond case, whitespace and accents
    (a number, symbol, abbreviation ... read out); ``preprocess.py`` reports the share of such sentences."""
    return normalize(text) != plain(text)
