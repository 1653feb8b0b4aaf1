"""Unsupported figures: the numbers in a grounded answer that none of the passages it was shown states.

A wrong fine, term or point count is the costliest error a traffic-law answer can make, and citation checks
do not catch it (the model cites the right article and misquotes it). `figures` reads every figure of a
text (a number with its unit) and `unsupported_figures` keeps those of an answer that no passage states.

Reading rules (Chinese first; English is handled simply, see below):

* Numbers: Arabic (``1000``, ``1,000``, ``2.5``, ``5万`` = 50000, ``5千`` = 5000), Chinese (``二千``, ``两千``, ``一千五百``,
  ``五万``, ``十五``, ``一百零五``, ``零点五``, digit-by-digit ``一〇五``; colloquial ``两千五`` = 2500) through
  `lorakit.data.build.chinese_numeral_to_int`. Full-width characters are folded with NFKC one character at a
  time, so offsets stay those of the original text (the full-width comma ``，`` is kept: it separates
  clauses, not thousands). ``半`` is a half: ``半年`` = 6 月 (the law writes ``六个月``), ``一年半`` = 1.5 年,
  ``两个半月`` = 2.5 月, ``半个月`` = 0.5 月 (a month is not a fixed number of days, so it does not match
  ``十五日``), ``半小时`` = 0.5 小时.
* Only a number with a unit is a figure. Units are normalised: 元/块/块钱 → 元 (``五万元`` = 50000 元),
  日/天 → 日, 个月/月 → 月, 年, 周 (weeks), 工作日, 周岁/岁 → 岁, 小时/钟头 → 小时, 分钟, 秒, 分 (points;
  not 分钟, 分之, 分局…, and ``十分`` = "very" unless after 记/扣/满), % (``50%``, ``百分之五十``, and any
  fraction ``三分之一`` as a percentage), 公里/小时 (also 公里每小时, km/h, and 公里 after 每小时/时速/车速),
  公里/千米, 米, 吨, 千克/公斤, 毫克, 毫升, 人/名 → 人, 辆, 次, 倍, 座.
* Ranges: a bare number joined by 至/到/—/-/~ to a figure takes its unit (``1000—2000元``, ``200到2000元``,
  ``一至五万元`` = 10000 and 50000 元); ``百分之二十至五十`` gives both ends the %. ``以上``/``以下`` need no
  rule: ``二百元以上二千元以下`` has two figures.
* Not figures: anything after 第 (articles, clauses, items, ordinals: 第九十一条, 第一款, 第（二）项,
  第一次), anything inside 《…》 (law titles), calendar dates (a 4-digit year before 年, with the month and
  day after it, and X月X日), list markers ``（一）``, approximations (``一两年``, ``三五天``, ``十五六人``),
  and 一 fused into a word (同一, 统一, 唯一…; 一次性; 一块 = "together").
* Support: a figure is supported when some passage has a figure of the same unit family with the same value
  after conversion (年 = 12 月, 周 = 7 日, 小时 = 60 分钟, 公里 = 1000 米, 吨 = 1000 千克), so ``2000元``
  matches ``二千元``, ``六个月`` matches ``6个月``, ``半年`` matches ``六个月`` and ``一年`` ``十二个月``.
  Days and months are different families.

English: Arabic numbers before yuan/RMB, day(s), month(s), year(s), years old, hour(s), minute(s),
point(s), percent/%, km/h, km, people/persons and vehicle(s) are read; number words ("two thousand") are not.

Left out: 亿, 多/余/几 (``一千多元`` is no figure), half-days in dates, bare month names (``六月`` reads as
six months), and whether a figure sits inside a passage's range (``1500元`` against ``一千元以上二千元以下``
is unsupported: the law states the ends, not every value in between).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from lorakit.data.build import chinese_numeral_to_int


@dataclass(frozen=True)
class Figure:
    """One figure of a text: as written, its value and normalised unit, and where it is."""

    text: str  # as written in the text, e.g. "一千元", "6个月", "百分之五十"
    value: float  # normalised number, e.g. 1000.0, 6.0, 50.0
    unit: str  # normalised unit, e.g. "元", "月", "日", "%", "公里/小时"
    start: int  # character offsets in the text
    end: int


_ZH = "零〇一二三四五六七八九十百千万两"
_ARABIC = r"(?<![A-Za-z0-9.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUM = rf"(?:{_ARABIC}[万千]?|[{_ZH}]+(?:点[零〇一二三四五六七八九]+)?)"

# (pattern, normalised unit), tried in this order at the same place; English ones end at a word boundary.
_UNITS: tuple[tuple[str, str], ...] = (
    (r"公里/小时|公里每小时|公里/时|千米/小时|千米每小时|(?i:km/h|kmh)(?![A-Za-z])", "公里/小时"),
    (r"元|块钱|块(?!儿)|(?i:yuan|rmb|cny)(?![A-Za-z])", "元"),
    (r"工作日", "工作日"),
    (r"月(?!份)|(?i:months?)(?![A-Za-z])", "月"),
    (r"日|天|(?i:days?)(?![A-Za-z])", "日"),
    (r"周岁|岁|(?i:years?\s+old)(?![A-Za-z])", "岁"),
    (r"周(?![岁年])|(?i:weeks?)(?![A-Za-z])", "周"),
    (r"年(?![级度代])|(?i:years?)(?![A-Za-z])", "年"),
    (r"小时|钟头|(?i:hours?)(?![A-Za-z])", "小时"),
    (r"分钟|(?i:minutes?)(?![A-Za-z])", "分钟"),
    (r"秒钟?|(?i:seconds?)(?![A-Za-z])", "秒"),
    (r"分(?![钟之局别析支类期享配])|(?i:points?)(?![A-Za-z])", "分"),
    (r"%|(?i:percent)(?![A-Za-z])", "%"),
    (r"公里|千米|(?i:km)(?![A-Za-z/])", "公里"),
    (r"米", "米"),
    (r"吨", "吨"),
    (r"千克|公斤|(?i:kg)(?![A-Za-z])", "千克"),
    (r"毫克|(?i:mg)(?![A-Za-z])", "毫克"),
    (r"毫升|(?i:ml)(?![A-Za-z])", "毫升"),
    (r"人(?!民)|名(?![称义单誉额字下次])|(?i:people|persons?)(?![A-Za-z])", "人"),
    (r"辆|(?i:vehicles?)(?![A-Za-z])", "辆"),
    (r"次(?!性)", "次"),
    (r"倍", "倍"),
    (r"座", "座"),
)
_UNIT_RES = tuple((re.compile(p), u) for p, u in _UNITS)
_TOKEN = re.compile(
    rf"(?P<frac>(?P<den>{_NUM})分之(?P<nu>{_NUM}))"
    rf"|(?P<n>{_NUM}|半)(?P<ge>个)?(?P<half>半)?\s*(?P<unit>{'|'.join(p for p, _ in _UNITS)})(?P<half2>半)?"
    rf"|(?P<bare>{_NUM})")
_RANGE = re.compile(r"\s*(?:至|到|[—―–\-~〜]+|(?i:to))\s*")
_FAMILY = {"年": ("月", 12.0), "月": ("月", 1.0), "周": ("日", 7.0), "日": ("日", 1.0),
           "小时": ("秒", 3600.0), "分钟": ("秒", 60.0), "秒": ("秒", 1.0),
           "公里": ("米", 1000.0), "米": ("米", 1.0), "吨": ("千克", 1000.0), "千克": ("千克", 1.0)}

_YEAR = r"(?:(?<!\d)\d{4}|[零〇一二三四五六七八九]{4})\s*年"
_MD = r"(?:\d{1,2}|[一二三四五六七八九十]{1,3})"
_DATE = re.compile(rf"{_YEAR}(?:\s*{_MD}\s*月(?:\s*{_MD}\s*[日号])?)?|(?<![\d{_ZH}]){_MD}\s*月\s*{_MD}\s*[日号]")
_TITLE = re.compile(r"《[^《》]*》")
_SPEED_CUE = re.compile(r"(?:每小时|时速|车速|速度)[^，。；、,;:：\n]{0,8}$")
_LONE = {"十": 10.0, "百": 100.0, "千": 1000.0, "万": 10000.0}  # 百分之…, 千分之…, 百分之百
_WORD_ONE = set("同统唯单任逐专划")  # 同一, 统一, 唯一 … are words, not the number one


def _fold(text: str) -> str:
    """NFKC one character at a time (full-width digits, ％, ～ …), keeping the length; '，' stays."""
    out = []
    for c in text:
        n = unicodedata.normalize("NFKC", c)
        out.append(n if len(n) == 1 and c != "，" else c)
    return "".join(out)


def _scan_text(text: str) -> str:
    """The text as the scanner sees it: folded, 千米/千克 spelt 公里/公斤 (same length, so 千 is no numeral),
    law titles and calendar dates blanked out."""
    s = _fold(text).replace("千米", "公里").replace("千克", "公斤")
    blank = lambda m: "\x00" * len(m.group())  # noqa: E731
    return _DATE.sub(blank, _TITLE.sub(blank, s))


def _number(s: str) -> float | None:
    """The value of one numeral, or None for what only looks like one (approximations, a lone 百/千/万)."""
    s = s.replace(",", "")
    if s == "半":
        return 0.5
    mul = 1.0
    if s[0].isdigit():
        if s[-1] in "万千":
            s, mul = s[:-1], {"万": 10000.0, "千": 1000.0}[s[-1]]
        return float(s) * mul
    whole, _, frac = s.partition("点")
    tail = float("0." + "".join(str(chinese_numeral_to_int(c)) for c in frac)) if frac else 0.0
    if not whole.strip("百千万"):
        return None  # 百米, 万元: a unit word, not a number
    if not any(c in "十百千万" for c in whole) and len(whole) > 1:
        if not any(c in "零〇" for c in whole):
            return None  # 一两, 三五: an approximation
        return float("".join(str(chinese_numeral_to_int(c)) for c in whole)) + tail  # 一〇五
    if re.search(r"[一二三四五六七八九两]{2}", whole):
        return None  # 十五六
    m = re.fullmatch(r"(.*)([百千万])([一二三四五六七八九两])", whole)
    try:
        if m and m.group(1):  # 两千五 = 2500, not 2005
            return float(chinese_numeral_to_int(m.group(1) + m.group(2))
                         + chinese_numeral_to_int(m.group(3)) * {"百": 10, "千": 100, "万": 1000}[m.group(2)])
        return float(chinese_numeral_to_int(whole)) + tail
    except ValueError:
        return None


def _unit(unit_text: str) -> str:
    for rx, u in _UNIT_RES:
        if rx.fullmatch(unit_text):
            return u
    raise AssertionError(unit_text)  # the token regex only matches listed units


def _ordinal(scan: str, start: int) -> bool:
    return re.search(r"第\s*$", scan[max(0, start - 4):start]) is not None


def figures(text: str) -> list[Figure]:
    """Every figure (number + unit) of ``text`` in order, following the rules of the module docstring."""
    scan = _scan_text(text)
    toks: list[tuple[int, int, float | None, str | None, re.Match]] = []  # start, end, value, unit, match
    for m in _TOKEN.finditer(scan):
        start, end = m.span()
        if _ordinal(scan, start):
            continue
        if m.group("frac"):
            den, nu = _LONE.get(m.group("den")) or _number(m.group("den")), _LONE.get(m.group("nu")) or _number(m.group("nu"))
            if den and nu is not None:
                toks.append((start, end, 100.0 * nu / den, "%", m))
            continue
        if m.group("bare"):
            if scan[start - 1:start] in ("(", "（") and scan[end:end + 1] in (")", "）"):
                continue  # （一） list marker
            toks.append((start, end, _number(m.group("bare")), None, m))
            continue
        n, unit_text = m.group("n"), m.group("unit")
        value, unit = _number(n), _unit(unit_text)
        prev = scan[start - 1:start]
        if value is None or (n == "一" and prev in _WORD_ONE) or (n == "一" and unit_text == "块"):
            continue
        if n == "十" and unit == "分" and prev not in ("记", "扣", "满", "计", "得"):
            continue  # 十分 = "very"
        if m.group("half") or m.group("half2"):
            value += 0.5
        if n == "半" and unit == "年" and not m.group("half2"):
            value, unit = 6.0, "月"  # 半年 = 六个月
        if unit == "公里" and _SPEED_CUE.search(scan[max(0, start - 12):start]):
            unit = "公里/小时"  # 每小时30公里, 时速最多十五公里
        toks.append((start, end, value, unit, m))

    out: list[Figure] = []
    for i, (start, end, value, unit, m) in enumerate(toks):
        if unit is None and value is not None:  # a range's bare end takes the unit of its other end
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            prv = toks[i - 1] if i else None
            if nxt and nxt[3] and nxt[2] is not None and _RANGE.fullmatch(scan[end:nxt[0]]):
                unit = nxt[3]
                nxt_num = nxt[4].group("n") or ""
                if nxt_num.endswith("万") and "万" not in m.group("bare") and value * 10000 <= nxt[2]:
                    value *= 10000  # 一至五万元
            elif prv and prv[3] == "%" and prv[4].group("frac") and _RANGE.fullmatch(scan[prv[1]:start]):
                unit = "%"  # 百分之二十至五十
        if unit is None or value is None:
            continue
        out.append(Figure(text[start:end], float(value), unit, start, end))
    return out


def _key(f: Figure) -> tuple[str, float]:
    family, factor = _FAMILY.get(f.unit, (f.unit, 1.0))
    return family, round(f.value * factor, 6)


def unsupported_figures(answer: str, passages: Sequence[str]) -> list[Figure]:
    """Figures of the answer that no passage states (same value and same unit family), in answer order."""
    stated = {_key(f) for p in passages for f in figures(p)}
    return [f for f in figures(answer) if _key(f) not in stated]
