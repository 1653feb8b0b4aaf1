"""Tests for `lorakit.rag.figures`: reading figures from Chinese (and simple English) text, and flagging the
figures of an answer that the passages do not state. The real check reads Article 91 of the 2021 road traffic
safety law from ../shared at run time."""
from __future__ import annotations

import pytest

from lorakit.rag.figures import Figure, figures, unsupported_figures
from rag_paths import LAW_2021, LAWS


def vu(text: str) -> list[tuple[float, str]]:
    """(value, unit) of every figure of ``text``."""
    return [(f.value, f.unit) for f in figures(text)]


def texts(figs: list[Figure]) -> list[str]:
    return [f.text for f in figs]


# ------------------------------------------------------------------ numerals
@pytest.mark.parametrize("text, value", [
    ("二千元", 2000), ("两千元", 2000), ("一千五百元", 1500), ("五万元", 50000), ("十五日", 15),
    ("二十日", 20), ("一百零五人", 105), ("十日", 10), ("两千五百元", 2500), ("两千五人", 2500),
    ("1000元", 1000), ("1,000元", 1000), ("2.5小时", 2.5), ("５０００元", 5000), ("5万元", 50000),
    ("1.5万元", 15000), ("5千元", 5000), ("一〇五元", 105), ("零点五毫克", 0.5),
])
def test_numerals(text, value):
    [f] = figures(text)
    assert f.value == value and f.text == text and (f.start, f.end) == (0, len(text))


def test_offsets_point_into_the_original_text():
    text = "饮酒后驾驶的，处暂扣６个月驾驶证，并处一千元罚款。"
    for f in figures(text):
        assert text[f.start:f.end] == f.text
    assert texts(figures(text)) == ["６个月", "一千元"]


def test_half():
    assert vu("半年") == [(6.0, "月")]
    assert vu("一年半") == [(1.5, "年")]
    assert vu("两个半月") == [(2.5, "月")]
    assert vu("半个月") == [(0.5, "月")]
    assert vu("不少于半小时") == [(0.5, "小时")]


def test_approximations_and_words_are_not_figures():
    assert figures("一两年内") == []
    assert figures("三五天") == []
    assert figures("十五六人") == []
    assert figures("同一天、统一年") == []
    assert figures("一次性赔偿") == []
    assert figures("一块去") == []
    assert figures("这十分危险") == []  # 十分 = very
    assert vu("扣十分") == [(10.0, "分")]


# ------------------------------------------------------------------ units
@pytest.mark.parametrize("text, unit", [
    ("200元", "元"), ("200块", "元"), ("200块钱", "元"), ("五万元", "元"),
    ("十五日", "日"), ("十五天", "日"), ("6个月", "月"), ("6月", "月"), ("三年", "年"),
    ("12分", "分"), ("10分钟", "分钟"), ("24小时", "小时"), ("18周岁", "岁"), ("18岁", "岁"),
    ("百分之五十", "%"), ("50%", "%"), ("５０％", "%"), ("60公里/小时", "公里/小时"),
    ("60公里每小时", "公里/小时"), ("60km/h", "公里/小时"), ("60千米/小时", "公里/小时"),
    ("3人", "人"), ("3名", "人"), ("2辆", "辆"), ("两次", "次"), ("三倍", "倍"), ("7座", "座"),
    ("五个工作日", "工作日"), ("10公里", "公里"), ("50米", "米"),
])
def test_units(text, unit):
    [f] = figures(text)
    assert f.unit == unit and f.text == text


def test_points_versus_minutes():
    assert vu("一次记12分") == [(1.0, "次"), (12.0, "分")]
    assert vu("休息少于20分钟") == [(20.0, "分钟")]
    assert vu("记满十二分") == [(12.0, "分")]
    assert figures("三分之一") == [Figure("三分之一", pytest.approx(100 / 3), "%", 0, 4)]


def test_percent():
    assert vu("车速比限速高出百分之五十") == [(50.0, "%")]
    assert vu("百分之百") == [(100.0, "%")]
    assert vu("超过50%") == [(50.0, "%")]


def test_speed_written_as_kilometres_after_a_speed_word():
    assert vu("在市区路上每小时30公里") == [(30.0, "公里/小时")]
    assert vu("时速最多十五公里") == [(15.0, "公里/小时")]
    assert vu("考试里程不少于10公里") == [(10.0, "公里")]


def test_wan_multiplies():
    assert vu("处五万元以上十万元以下罚款") == [(50000.0, "元"), (100000.0, "元")]


# ------------------------------------------------------------------ ranges
@pytest.mark.parametrize("text, expected", [
    ("一千元至二千元", [(1000.0, "元"), (2000.0, "元")]),
    ("1000—2000元", [(1000.0, "元"), (2000.0, "元")]),
    ("1000-2000元", [(1000.0, "元"), (2000.0, "元")]),
    ("200到2000元", [(200.0, "元"), (2000.0, "元")]),
    ("十至十五日", [(10.0, "日"), (15.0, "日")]),
    ("二百元以上二千元以下", [(200.0, "元"), (2000.0, "元")]),
    ("五日以下", [(5.0, "日")]),
    ("1至5万元", [(10000.0, "元"), (50000.0, "元")]),
    ("百分之二十至五十", [(20.0, "%"), (50.0, "%")]),
])
def test_ranges(text, expected):
    assert vu(text) == expected


def test_range_end_text_and_offsets():
    [a, b] = figures("罚款1000—2000元")
    assert (a.text, a.start, a.end) == ("1000", 2, 6)
    assert (b.text, b.start, b.end) == ("2000元", 7, 12)


def test_a_bare_number_is_not_a_figure():
    assert figures("有1000多条记录，其中二十条") == []


# ------------------------------------------------------------------ not figures
def test_article_references_are_not_figures():
    assert figures("根据《道路交通安全法》第九十一条第一款") == []
    assert figures("《刑法》第133条、第（二）项、第 3 项") == []
    assert figures("本法第一百一十九条") == []


def test_ordinals_are_not_figures():
    assert figures("第一次饮酒后驾驶") == []
    assert vu("第一次被处罚后再次饮酒驾驶，两次以上") == [(2.0, "次")]


def test_law_titles_and_dates_are_not_figures():
    assert figures("《中华人民共和国道路交通安全法（2021年4月29日修正）》") == []
    assert figures("2004年5月1日开始实行，二〇二一年四月二十九日改过") == []
    assert figures("4月29日公布") == []
    assert vu("2021年修正，五年内不得重新取得") == [(5.0, "年")]


def test_list_markers_are_not_figures():
    assert figures("（一）饮酒后驾驶的；(2)醉酒驾驶的；（三）人民法院") == []


def test_no_figures():
    assert figures("") == []
    assert figures("醉驾的，驾照吊销，还要追究刑责。") == []
    assert unsupported_figures("醉酒驾驶的，依法追究刑事责任。", ["醉酒驾驶机动车的，依法追究刑事责任"]) == []


def test_english_simply():
    assert vu("a fine of 200 yuan and 15 days of detention") == [(200.0, "元"), (15.0, "日")]
    assert vu("6 months, 12 points, 50 percent, 60 km/h") == [(6.0, "月"), (12.0, "分"), (50.0, "%"),
                                                              (60.0, "公里/小时")]
    assert vu("200 to 2000 yuan") == [(200.0, "元"), (2000.0, "元")]
    assert figures("two thousand yuan, Article 91") == []  # number words are not read


# ------------------------------------------------------------------ support
PASSAGE = "酒后开车的，驾照暂扣六个月，罚款一千元以上二千元以下；拘留十五日。"


@pytest.mark.parametrize("answer", [
    "暂扣6个月驾驶证，罚款1000元至2000元。",
    "暂扣半年驾驶证，罚款一千元到两千元。",
    "罚款1,000—2,000元，拘留15天。",
    "罚款１０００元以上２０００元以下。",
])
def test_supported_in_another_surface_form(answer):
    assert figures(answer)
    assert unsupported_figures(answer, [PASSAGE]) == []


def test_unsupported_are_flagged_in_answer_order():
    answer = "驾照扣六个月，罚五百元以上二千元以下，拘留十日，记12分。"
    flagged = unsupported_figures(answer, [PASSAGE])
    assert texts(flagged) == ["五百元", "十日", "12分"]
    assert [answer[f.start:f.end] for f in flagged] == texts(flagged)


def test_support_needs_the_same_unit_family():
    assert texts(unsupported_figures("拘留十五个月", [PASSAGE])) == ["十五个月"]  # 15 days, not months
    assert texts(unsupported_figures("15分", ["15分钟"])) == ["15分"]  # points are not minutes
    assert unsupported_figures("一年内", ["十二个月内"]) == []  # 年 and 月 convert
    assert unsupported_figures("半小时", ["30分钟"]) == []
    assert unsupported_figures("2周", ["14日"]) == []
    assert texts(unsupported_figures("半个月", ["十五日"])) == ["半个月"]  # months are not days
    assert unsupported_figures("超速50%", ["车速比限速高出百分之五十"]) == []
    assert unsupported_figures("30公里/小时", ["在市区路上每小时30公里"]) == []


def test_any_passage_may_support():
    assert unsupported_figures("罚款二百元，记12分", ["处二百元罚款", "一次记12分"]) == []
    assert texts(unsupported_figures("罚款二百元，记12分", [])) == ["二百元", "12分"]


def test_article_numbers_in_the_answer_are_never_flagged():
    assert unsupported_figures("根据《道路交通安全法》第九十一条，第一次饮酒驾驶", [PASSAGE]) == []


# ------------------------------------------------------------------ the real law, read at run time
@pytest.fixture(scope="module")
def article_91() -> str:
    path = LAWS / LAW_2021
    if not path.is_file():
        pytest.skip(f"the shared law text is not at {path}")
    from lorakit.data.build import chunk_articles
    [chunk] = [c for c in chunk_articles(path) if c.number == 91]
    return chunk.text


def test_real_article_91_figures(article_91):
    print(article_91)
    stated = vu(article_91)
    for fig in [(6.0, "月"), (1000.0, "元"), (2000.0, "元"), (10.0, "日"), (15.0, "日"), (5000.0, "元"),
                (5.0, "年"), (10.0, "年")]:
        assert fig in stated
    assert not any(u in ("条", "款") for _, u in stated)


def test_real_article_91_supports_a_faithful_answer(article_91):
    answer = "根据《道路交通安全法》第九十一条，喝酒开车第一次被查，驾照扣六个月，另罚一千元以上二千元以下。"
    assert texts(figures(answer)) == ["六个月", "一千元", "二千元"]
    assert unsupported_figures(answer, [article_91]) == []


def test_real_article_91_flags_wrong_figures(article_91):
    answer = ("根据《道路交通安全法》第九十一条，喝酒开车的驾照扣6个月，"
              "罚款二十元至二千元，第二次再犯可拘留三十日，五年里不能再考驾照。")
    assert texts(unsupported_figures(answer, [article_91])) == ["二十元", "三十日"]
