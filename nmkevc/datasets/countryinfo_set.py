"""A real-world fact set in the CounterFact schema, built from the `countryinfo` package (MIT).

CounterFact itself cannot be downloaded here, so this gives the tests, benchmarks and
examples real facts a small model knows: for each country, its capital, continent, first
official language, first currency, demonym and UN subregion, and for each first-level
administrative division (province, state, region) the country it belongs to, with
counterfactual targets drawn (seeded) from the same relation's other values.

Choices (the evaluation code relies on them):
- Templates: each relation has 4 prompts with `{}` for the subject; the first is the
  rewrite prompt, the other 3 give the paraphrase prompts (as CounterFact, written out as
  full text with the subject filled in).
- Neighbourhood (up to 10 prompts per case): prompts of the same relation about other
  subjects. CounterFact's convention is neighbours whose true answer *is* the edited
  fact's `target_true`, so a good edit keeps P(target_true) > P(target_new) there; those
  are taken first. Where too few exist (every capital is unique), other subjects of the
  relation fill up, never one whose answer is `target_new`. Because the expected answer is
  then not always `target_true`, each record carries two extension fields in step with
  `neighborhood_prompts`: `neighborhood_answers` (that neighbour's true answer) and
  `neighborhood_subjects`. A neighbour whose name contains the subject's or vice versa
  (Niger / Nigeria) is never used, since that edit could rightly change it.
- Data cleaning: entries without an ISO alpha-3 code, with a duplicate code, with
  parentheses or commas in the name, or that are former / duplicate states (see
  `SKIP_SUBJECTS`) are dropped. A capital equal to the country's name (Monaco) or holding
  several cities is dropped. Continents: countryinfo's regions, with the Americas split
  into South America (its "South America" intermediate region) and North America (the
  rest, Central America and the Caribbean included). Languages and currencies are ISO
  codes in countryinfo; the tables below give their English names, and a code missing
  from them (such as Serbia's invalid language code "rs") drops that fact. Investment-fund
  currency codes (CHE, CLF, ...) are passed over for the next listed currency.
  The facts are countryinfo 1.0.1's, some of them dated (Croatia's kuna).
  Provinces: countryinfo's per-country lists; a parenthesised alternative name is cut
  ("Tirane (Tirana)" -> "Tirane"), and a name found under two countries, equal to or
  overlapping its country's name, or containing digits is dropped. There are ~4,400, so
  by default a seeded sample of `DEFAULT_LIMITS["province"]` enters the set.
- Subject position: capital, continent, language, currency and demonym keep the subject
  off position 0 in the rewrite prompt; subregion and province put it first
  ("{} is a province of"), as real fact sets do, so both kinds are measured.
- Split: every record carries `"split": "dev"` or `"test"`, a fixed function of (relation,
  subject) — about 20% dev — independent of the seed, so hyperparameters are chosen on dev
  records only and the reported figures come from test records no choice has seen.
- Determinism: one `random.Random` per (seed, relation), subjects in sorted order, so the
  same seed gives byte-identical output from `write_dataset`, and adding a relation never
  changes another relation's cases.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NmkevcError
from ..storage.fsutil import atomic_write

N_NEIGHBOURS = 10


@dataclass(frozen=True)
class Relation:
    name: str
    relation_id: str  # the Wikidata property, as CounterFact's `relation_id`
    templates: tuple[str, ...]  # [0] is the rewrite prompt, the rest are paraphrases


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "capital",
        "P36",
        (
            "The capital of {} is",
            "The capital city of {} is",
            "The seat of government of {} is",
            "{} has its capital in",
        ),
    ),
    Relation(
        "continent",
        "P30",
        (
            # the rewrite prompt keeps the subject off position 0: with no BOS token (SmolLM2)
            # the first position's keys are unlike the subject's keys anywhere else
            "The continent on which {} lies is",
            "{} is located in the continent of",
            "{} is part of the continent of",
            "{} belongs to the continent of",
        ),
    ),
    Relation(
        "language",
        "P37",
        (
            "The official language of {} is",
            "In {}, the official language is",
            "The primary language of {} is",
            "The language officially used in {} is",
        ),
    ),
    Relation(
        "currency",
        "P38",
        (
            "The currency of {} is the",
            "The official currency of {} is the",
            "In {}, people pay with the",
            "The money used in {} is the",
        ),
    ),
    Relation(
        "demonym",
        "P1549",
        (
            "The people of {} are called",
            "A citizen of {} is called",
            "Someone who comes from {} is called",
            "The inhabitants of {} are known as",
        ),
    ),
    Relation(
        "subregion",
        "P361",
        (
            "{} is located in the region of",
            "{} is part of the world region of",
            "The world region that {} belongs to is",
            "Geographically, {} is part of",
        ),
    ),
    Relation(
        "province",
        "P17",
        (
            "{} is a province of",
            "{} is an administrative region of the country of",
            "The country in which {} lies is",
            "{} is located in the country of",
        ),
    ),
)
RELATION_NAMES = tuple(r.name for r in RELATIONS)

SKIP_SUBJECTS = frozenset(
    {
        "Burma",  # duplicate of Myanmar
        "Serbia and Montenegro",  # dissolved in 2006
        "Antilles néerlandaises",  # dissolved in 2010
    }
)
CONTINENTS = {"Africa", "Asia", "Europe", "Oceania"}
#: default seeded sample sizes (None = every subject); `max_per_relation` overrides them
DEFAULT_LIMITS: dict[str, int | None] = {"province": 1200}
DEV_SHARE = 5  # one record in DEV_SHARE (by hash) is a dev record
FUND_CODES = frozenset({"BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "USS", "UYI"})

LANGUAGES = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bi": "Bislama", "bn": "Bengali",
    "bs": "Bosnian", "ca": "Catalan", "cnr": "Montenegrin", "cs": "Czech", "da": "Danish",
    "de": "German", "dv": "Dhivehi", "dz": "Dzongkha", "el": "Greek", "en": "English",
    "es": "Spanish", "et": "Estonian", "fa": "Persian", "fi": "Finnish", "fo": "Faroese",
    "fr": "French", "ga": "Irish", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "is": "Icelandic",
    "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh",
    "kl": "Greenlandic", "km": "Khmer", "ko": "Korean", "ky": "Kyrgyz", "la": "Latin",
    "lo": "Lao", "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian",
    "mn": "Mongolian", "ms": "Malay", "mt": "Maltese", "my": "Burmese", "ne": "Nepali",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "rw": "Kinyarwanda", "si": "Sinhala",
    "sk": "Slovak", "sl": "Slovene", "sm": "Samoan", "so": "Somali", "sq": "Albanian",
    "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "tg": "Tajik", "th": "Thai",
    "ti": "Tigrinya", "tk": "Turkmen", "tr": "Turkish", "uk": "Ukrainian", "uz": "Uzbek",
    "vi": "Vietnamese", "zh": "Chinese",
}  # fmt: skip

CURRENCIES = {
    "AED": "UAE dirham", "AFN": "Afghan afghani", "ALL": "Albanian lek",
    "AMD": "Armenian dram", "AOA": "Angolan kwanza", "ARS": "Argentine peso",
    "AUD": "Australian dollar", "AWG": "Aruban florin", "AZN": "Azerbaijani manat",
    "BAM": "convertible mark", "BBD": "Barbadian dollar", "BDT": "Bangladeshi taka",
    "BGN": "Bulgarian lev", "BHD": "Bahraini dinar", "BIF": "Burundian franc",
    "BMD": "Bermudian dollar", "BND": "Brunei dollar", "BOB": "Bolivian boliviano",
    "BRL": "Brazilian real", "BSD": "Bahamian dollar", "BTN": "Bhutanese ngultrum",
    "BWP": "Botswana pula", "BYR": "Belarusian ruble", "BZD": "Belize dollar",
    "CAD": "Canadian dollar", "CDF": "Congolese franc", "CHF": "Swiss franc",
    "CLP": "Chilean peso", "CNY": "Chinese yuan", "COP": "Colombian peso",
    "CRC": "Costa Rican colon", "CUC": "Cuban convertible peso", "CUP": "Cuban peso",
    "CVE": "Cape Verdean escudo", "CZK": "Czech koruna", "DJF": "Djiboutian franc",
    "DKK": "Danish krone", "DOP": "Dominican peso", "DZD": "Algerian dinar",
    "EGP": "Egyptian pound", "ERN": "Eritrean nakfa", "ETB": "Ethiopian birr",
    "EUR": "euro", "FJD": "Fijian dollar", "FKP": "Falkland Islands pound",
    "GBP": "pound sterling", "GEL": "Georgian lari", "GHS": "Ghanaian cedi",
    "GIP": "Gibraltar pound", "GMD": "Gambian dalasi", "GNF": "Guinean franc",
    "GTQ": "Guatemalan quetzal", "GYD": "Guyanese dollar", "HKD": "Hong Kong dollar",
    "HNL": "Honduran lempira", "HRK": "Croatian kuna", "HTG": "Haitian gourde",
    "HUF": "Hungarian forint", "IDR": "Indonesian rupiah", "ILS": "Israeli new shekel",
    "INR": "Indian rupee", "IQD": "Iraqi dinar", "IRR": "Iranian rial",
    "ISK": "Icelandic krona", "JMD": "Jamaican dollar", "JOD": "Jordanian dinar",
    "JPY": "Japanese yen", "KES": "Kenyan shilling", "KGS": "Kyrgyzstani som",
    "KHR": "Cambodian riel", "KMF": "Comorian franc", "KPW": "North Korean won",
    "KRW": "South Korean won", "KWD": "Kuwaiti dinar", "KYD": "Cayman Islands dollar",
    "KZT": "Kazakhstani tenge", "LAK": "Lao kip", "LBP": "Lebanese pound",
    "LKR": "Sri Lankan rupee", "LRD": "Liberian dollar", "LSL": "Lesotho loti",
    "LYD": "Libyan dinar", "MAD": "Moroccan dirham", "MDL": "Moldovan leu",
    "MGA": "Malagasy ariary", "MKD": "Macedonian denar", "MMK": "Burmese kyat",
    "MNT": "Mongolian tugrik", "MOP": "Macanese pataca", "MRO": "Mauritanian ouguiya",
    "MUR": "Mauritian rupee", "MVR": "Maldivian rufiyaa", "MWK": "Malawian kwacha",
    "MXN": "Mexican peso", "MYR": "Malaysian ringgit", "MZN": "Mozambican metical",
    "NAD": "Namibian dollar", "NGN": "Nigerian naira", "NIO": "Nicaraguan cordoba",
    "NOK": "Norwegian krone", "NPR": "Nepalese rupee", "NZD": "New Zealand dollar",
    "OMR": "Omani rial", "PAB": "Panamanian balboa", "PEN": "Peruvian sol",
    "PGK": "Papua New Guinean kina", "PHP": "Philippine peso", "PKR": "Pakistani rupee",
    "PLN": "Polish zloty", "PYG": "Paraguayan guarani", "QAR": "Qatari riyal",
    "RON": "Romanian leu", "RSD": "Serbian dinar", "RUB": "Russian ruble",
    "RWF": "Rwandan franc", "SAR": "Saudi riyal", "SBD": "Solomon Islands dollar",
    "SCR": "Seychellois rupee", "SDG": "Sudanese pound", "SEK": "Swedish krona",
    "SGD": "Singapore dollar", "SHP": "Saint Helena pound", "SLL": "Sierra Leonean leone",
    "SOS": "Somali shilling", "SRD": "Surinamese dollar", "SSP": "South Sudanese pound",
    "STD": "Sao Tome and Principe dobra", "SVC": "Salvadoran colon",
    "SYP": "Syrian pound", "SZL": "Swazi lilangeni", "THB": "Thai baht",
    "TJS": "Tajikistani somoni", "TMT": "Turkmenistan manat", "TND": "Tunisian dinar",
    "TOP": "Tongan pa'anga", "TRY": "Turkish lira", "TTD": "Trinidad and Tobago dollar",
    "TWD": "New Taiwan dollar", "TZS": "Tanzanian shilling", "UAH": "Ukrainian hryvnia",
    "UGX": "Ugandan shilling", "USD": "US dollar", "UYU": "Uruguayan peso",
    "UZS": "Uzbekistani som", "VEF": "Venezuelan bolivar", "VND": "Vietnamese dong",
    "VUV": "Vanuatu vatu", "WST": "Samoan tala", "XAF": "Central African CFA franc",
    "XCD": "East Caribbean dollar", "XOF": "West African CFA franc", "XPF": "CFP franc",
    "YER": "Yemeni rial", "ZAR": "South African rand", "ZMK": "Zambian kwacha",
}  # fmt: skip


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip() and "{" not in value and "}" not in value:
        return " ".join(value.split())
    return None


def _capital(d: dict, name: str) -> str | None:
    cap = _text(d.get("capital"))
    if cap is None or "/" in cap or cap == name:
        return None
    return cap


def _continent(d: dict) -> str | None:
    region = _text(d.get("region"))
    if region in CONTINENTS:
        return region
    if region == "Americas":
        sub = _text(d.get("intermediateregion"))
        return "South America" if sub == "South America" else "North America"
    return None


def _language(d: dict) -> str | None:
    codes = d.get("languages")
    if not isinstance(codes, list) or not codes or not isinstance(codes[0], str):
        return None
    return LANGUAGES.get(codes[0])


def _currency(d: dict) -> str | None:
    codes = d.get("currencies")
    if not isinstance(codes, list):
        return None
    codes = [c for c in codes if isinstance(c, str) and c not in FUND_CODES]
    return CURRENCIES.get(codes[0]) if codes else None


def _demonym(d: dict) -> str | None:
    return _text(d.get("demonym"))


def _subregion(d: dict) -> str | None:
    sub = _text(d.get("subregion"))
    return sub[0] + sub[1:].replace("South-Eastern", "South-eastern") if sub else None


def _provinces(d: dict, name: str) -> list[str]:
    raw = d.get("provinces")
    if isinstance(raw, str):  # some entries hold the list's repr: parse it as a literal, never eval
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return []
    if not isinstance(raw, list):
        return []
    out = []
    for p in raw:
        p = _text(p)
        if p is None:
            continue
        p = p.split(" (")[0].strip()
        if p and "(" not in p and "," not in p and not any(ch.isdigit() for ch in p) and not _overlaps(p, name):
            out.append(p)
    return out


def _load_countries() -> dict:
    try:
        from countryinfo import CountryInfo
    except ImportError:
        raise NmkevcError(
            "the countryinfo fact set needs the countryinfo package: pip install countryinfo"
        ) from None
    return CountryInfo.all()


def country_facts(countries: dict | None = None) -> dict[str, dict[str, str]]:
    """relation name -> {country name -> true answer}, after the cleaning in the module doc."""
    countries = _load_countries() if countries is None else countries
    entries = []
    for d in countries.values():
        name = _text(d.get("name")) if isinstance(d, dict) else None
        iso = d.get("ISO") if name else None
        alpha3 = _text(iso.get("alpha3")) if isinstance(iso, dict) else None
        if name is None or alpha3 is None or name in SKIP_SUBJECTS:
            continue
        if "(" in name or "," in name:
            continue
        entries.append((name, alpha3, d))
    entries.sort(key=lambda e: e[0])
    seen: set[str] = set()
    facts: dict[str, dict[str, str]] = {r: {} for r in RELATION_NAMES}
    owners: dict[str, set[str]] = {}
    for name, alpha3, d in entries:
        if alpha3 in seen:
            continue
        seen.add(alpha3)
        values = {
            "capital": _capital(d, name),
            "continent": _continent(d),
            "language": _language(d),
            "currency": _currency(d),
            "demonym": _demonym(d),
            "subregion": _subregion(d),
        }
        for rel, value in values.items():
            if value is not None:
                facts[rel][name] = value
        for province in _provinces(d, name):
            owners.setdefault(province, set()).add(name)
    countries_named = {name for name, _, _ in entries}
    facts["province"] = {
        p: next(iter(c)) for p, c in owners.items() if len(c) == 1 and p not in countries_named
    }
    return facts


def _overlaps(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a in b or b in a


def split_of(relation: str, subject: str) -> str:
    """'dev' or 'test': fixed by (relation, subject) alone, whatever the seed or sample."""
    h = hashlib.sha256(f"nmkevc-split/{relation}/{subject}".encode()).digest()
    return "dev" if int.from_bytes(h[:8], "big") % DEV_SHARE == 0 else "test"


def _relation_records(rel: Relation, answers: dict[str, str], seed: int, limit: int | None):
    rng = random.Random(f"nmkevc-countryinfo/{seed}/{rel.name}")
    subjects = sorted(answers)
    values = sorted(set(answers.values()))
    chosen = subjects
    if limit is not None and limit < len(subjects):
        chosen = sorted(rng.sample(subjects, limit))
    for subject in chosen:
        true = answers[subject]
        target = rng.choice([v for v in values if v != true])
        others = [s for s in subjects if s != subject and not _overlaps(s, subject)]
        same = [s for s in others if answers[s] == true]
        rest = [s for s in others if answers[s] not in (true, target)]
        picked = rng.sample(same, min(N_NEIGHBOURS, len(same)))
        picked += rng.sample(rest, min(N_NEIGHBOURS - len(picked), len(rest)))
        fill = rel.templates
        yield {
            "requested_rewrite": {
                "prompt": rel.templates[0],
                "relation_id": rel.relation_id,
                "subject": subject,
                "target_new": {"str": target},
                "target_true": {"str": true},
            },
            "paraphrase_prompts": [t.replace("{}", subject) for t in rel.templates[1:]],
            "neighborhood_prompts": [fill[j % len(fill)].replace("{}", s) for j, s in enumerate(picked)],
            "neighborhood_answers": [answers[s] for s in picked],
            "neighborhood_subjects": picked,
            "attribute_prompts": [],
            "generation_prompts": [],
            "split": split_of(rel.name, subject),
        }


def build_countryinfo(
    seed: int = 0,
    relations: Iterable[str] | None = None,
    max_per_relation: int | None = None,
    countries: dict | None = None,
    split: str | None = None,
) -> list[dict]:
    """CounterFact-schema records (with `case_id` 0, 1, ...) for the chosen relations.

    `relations` picks among `RELATION_NAMES` (all by default; always emitted in that
    order). `max_per_relation` takes a seeded sample of subjects (default: every subject,
    or `DEFAULT_LIMITS`). `countries` replaces countryinfo's data (a dict like
    `CountryInfo.all()`). `split` ("dev" / "test") keeps that part only; case ids are those
    of the whole set, so the two parts never share one.
    """
    if split not in (None, "dev", "test"):
        raise NmkevcError(f"unknown split {split!r}; choose dev or test")
    wanted = RELATION_NAMES if relations is None else tuple(relations)
    unknown = [r for r in wanted if r not in RELATION_NAMES]
    if unknown:
        raise NmkevcError(f"unknown relation {unknown[0]!r}; choose from {', '.join(RELATION_NAMES)}")
    if max_per_relation is not None and max_per_relation < 0:
        raise NmkevcError("max_per_relation must be zero or more")
    facts = country_facts(countries)
    records: list[dict] = []
    for rel in RELATIONS:
        if rel.name not in wanted or len(set(facts[rel.name].values())) < 2:
            continue
        limit = max_per_relation if max_per_relation is not None else DEFAULT_LIMITS.get(rel.name)
        for rec in _relation_records(rel, facts[rel.name], seed, limit):
            records.append({"case_id": len(records), **rec})
    return [r for r in records if split is None or r["split"] == split]


def count_by_relation(records: Iterable[dict]) -> dict[str, int]:
    """How many records each relation has (by name), for reports."""
    names = {r.relation_id: r.name for r in RELATIONS}
    counts = Counter(names.get(r["requested_rewrite"].get("relation_id"), "other") for r in records)
    return dict(counts)


def write_dataset(records: list[dict], out_path: str | Path) -> Path:
    """Write records as JSON (a list), or JSONL if the name ends in .jsonl; atomically.

    The bytes depend only on the records, so a rebuild with the same seed is identical.
    """
    out = Path(out_path)
    if out.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    try:
        atomic_write(out, text.encode("utf-8"), what="dataset")
    except OSError as e:
        raise NmkevcError(f"cannot write {out}: {e.strerror or e}") from None
    return out
