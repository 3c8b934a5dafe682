#!/usr/bin/env python3
"""Writes tests/data/tokenizer/corpus.jsonl: the texts the tokenizer tests encode with our
tokenizer and with the reference. One JSON string per line, so a case may hold newlines,
tabs and any character. Deterministic: rerunning gives the same file."""
import json
import pathlib
import random

ENGLISH = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "It's a test; don't panic: we'll see what they've done, I'm sure you'd agree.",
    "IT'S LOUD AND WE'LL SHOUT, DON'T WE? THEY'VE GONE, I'M HERE, YOU'D KNOW.",
    "Mr. O'Neil's cat isn't here.", "e-mail: first.last+tag@example.com",
    "https://example.com/path/to/page?query=1&other=two#fragment",
    "Inference boxes serve tokens; latency matters more than you'd think.",
    "  leading spaces", "trailing spaces   ", "multiple     inner      spaces",
    "UPPER lower MiXeD CaSe", "naïve café résumé coöperate façade", "A.B.C. U.S.A. e.g. i.e. etc.",
    "50% off! Only $19.99 (tax incl.) — limited time…", "“Smart quotes” and ‘single ones’",
    "tab\tseparated\tvalues\there", "line one\nline two\n\nline four", "windows\r\nline\r\nendings",
    "\n\n\nstarts with newlines", "ends with newlines\n\n", " \n \n mixed \t \n whitespace",
]
CHINESE_SIMPLIFIED = [
    "你好，世界！", "今天天气很好，我们去公园散步吧。", "人工智能正在改变世界。",
    "这是一个测试句子，包含标点符号：逗号、句号。", "北京是中华人民共和国的首都。",
    "我爱自然语言处理和大型语言模型。", "请把文件发送到我的邮箱。", "数字１２３和ABC混合。",
]
CHINESE_TRADITIONAL = [
    "你好，世界！歡迎光臨。", "臺灣的夜市非常熱鬧。", "這個問題需要仔細思考。",
    "電腦與網路改變了我們的生活。", "繁體中文與簡體中文有許多差異。",
]
JAPANESE = [
    "こんにちは、世界！", "今日はいい天気ですね。", "東京タワーに行きました。",
    "カタカナとひらがなと漢字が混ざった文章です。", "ｶﾀｶﾅ半角もあります。", "日本語の文章を分割する。",
]
KOREAN = [
    "안녕하세요, 세계!", "오늘 날씨가 정말 좋네요.", "한국어 형태소 분석은 어렵습니다.",
    "서울특별시 강남구", "\u1100\u1161\u11a8 decomposed hangul jamo",
]
ARABIC = [
    "مرحبا بالعالم", "اللغة العربية جميلة جدا.", "الذكاء الاصطناعي يغير العالم ١٢٣٤٥",
    "السَّلَامُ عَلَيْكُمْ",
]
OTHER_SCRIPTS = [
    "Привет, мир! Съешь же ещё этих мягких французских булок.", "Γειά σου Κόσμε! Ελληνικά.",
    "नमस्ते दुनिया! हिन्दी भाषा।", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง", "שלום עולם! עברית.",
    "Tiếng Việt có dấu: Xin chào thế giới.", "Ümlaut Straße Größe ÄÖÜ äöü ß",
    "Ελληνικά και Русский и English mixed together.",
]
CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <iostream>\nint main() {\n  std::cout << \"hi\\n\";\n  return 0;\n}\n",
    "const add = (a, b) => a + b;\nconsole.log(add(1, 2)); // 3\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "for f in *.txt; do echo \"$f\" | tr 'a-z' 'A-Z'; done 2>&1 >/dev/null",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "<div class=\"box\"><p>Hello &amp; welcome</p><br/></div>",
    "if (x != nullptr && *x >= 0x7fffffff) { return ~x | (y << 3); }",
    "    indented with spaces\n\tindented with tab\n\t\tdouble tab",
    "a+=b; c-=d; e*=f; g/=h; i%=j; k**=2; l//=3; m>>=1; n<<=1",
    "x = [i for i in range(100) if i % 3 == 0]  # comprehension",
    "public static void Main(string[] args) { Console.WriteLine(\"C#\"); }",
    "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"go\") }\n",
    "```python\nprint('markdown fence')\n```",
    "$ ls -la /usr/local/bin | grep -E '^-rwx' | wc -l",
]
EMOJI = [
    "I ❤️ tokenizers 🎉🎉🎉", "👨‍👩‍👧‍👦 family ZWJ sequence", "👩🏽‍💻 woman technologist medium skin",
    "🏳️‍🌈 rainbow flag", "🇯🇵🇺🇸🇩🇪 flags", "1️⃣2️⃣3️⃣ keycaps", "😀😃😄😁😆😅🤣😂🙂🙃",
    "🧑‍🚀 astronaut", "emoji at end 🚀", "🚀 emoji at start", "mixed🙂text😉here",
]
NUMBERS = [
    "0", "7", "42", "123", "1234", "12345", "123456789012345678901234567890",
    "3.14159265358979323846", "-0.0001", "1e-10", "6.022e23", "1,000,000", "1 000 000",
    "+1 (555) 123-4567", "2024-11-25T18:12:19Z", "v1.2.3-rc.4+build.567", "0xDEADBEEF 0b1010 0o777",
    "٠١٢٣٤٥٦٧٨٩ Arabic-Indic digits", "１２３ fullwidth digits", "Ⅻ roman numeral",
]
SPECIAL_STRINGS = [
    "<|im_start|>user\nhello<|im_end|>", "text <|endoftext|> more text", "<|im_end|><|im_end|>",
    "<|begin_of_text|>hi<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nhi",
    "<｜begin▁of▁sentence｜>hello<｜end▁of▁sentence｜>", "<｜User｜>question<｜Assistant｜>answer",
    "partial <|im_ and <|eot_ and <｜begin", "<think>reasoning</think> answer", "<tool_call>{}</tool_call>",
    "x<|im_start|>y", "<|im_start|> spaced <|im_end|>", "<|reserved_special_token_5|>",
]
WHITESPACE = [
    " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\n ", "\t\t\t", "a  b", "a\t\tb",
    "a \n b", "a\u00a0b non-breaking", "ideographic\u3000space", "em\u2003space", "zero\u200bwidth",
    "bom\ufeffinside", "\ufeffstarts with bom", "next\u0085line", "line\u2028separator",
    "para\u2029separator", "vertical\x0btab", "form\x0cfeed", "nul-free control \x01\x02\x1f",
]
NORMALIZATION = [
    "e\u0301 vs \u00e9", "A\u030a vs \u00c5", "\u1e9b\u0323", "ﬁ ligature", "Å Ω K ℃",
    "n\u0303o\u0308", "\u0041\u0301\u0302\u0303 stacked marks", "한\u1100\u1161",
]
LONG = [
    "a" * 5000, "ab" * 1500, "supercalifragilisticexpialidocious" * 40,
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQgZW5jb2RlZCBkYXRh" * 20,
    "0123456789abcdef" * 100, "!" * 300, " " * 300, "\n" * 200, "中" * 1000, "😀" * 300,
    "https://example.com/" + "segment/" * 200,
]


def main() -> None:
    rng = random.Random(20261125)
    base = (ENGLISH + CHINESE_SIMPLIFIED + CHINESE_TRADITIONAL + JAPANESE + KOREAN + ARABIC +
            OTHER_SCRIPTS + CODE + EMOJI + NUMBERS + SPECIAL_STRINGS + WHITESPACE + NORMALIZATION)
    cases = list(base) + LONG
    # Characters one by one from many blocks, in runs, so every script meets each pattern.
    blocks = [(0x20, 0x7F), (0xA0, 0x180), (0x370, 0x400), (0x400, 0x500), (0x590, 0x700),
              (0x900, 0x980), (0xE00, 0xE80), (0x1100, 0x1200), (0x2000, 0x2070), (0x20A0, 0x20C0),
              (0x2190, 0x2200), (0x2500, 0x2580), (0x3000, 0x3100), (0x4E00, 0x4F00),
              (0xAC00, 0xAD00), (0xFF00, 0xFFF0), (0x1F300, 0x1F400), (0x1F600, 0x1F650)]
    for low, high in blocks:
        chars = [chr(c) for c in range(low, high) if not (0xD800 <= c < 0xE000)]
        for start in range(0, len(chars), 16):
            cases.append("".join(chars[start:start + 16]))
            cases.append(" ".join(chars[start:start + 16]))
    # Mixtures of fragments with random separators, to reach beyond 2,000 cases.
    separators = [" ", "", "\n", "  ", "\t", ", ", " - ", "\r\n", "\u3000", " \n\n"]
    while len(cases) < 2400:
        parts = rng.sample(base, rng.randint(2, 4))
        text = ""
        for part in parts:
            text += part + rng.choice(separators)
        cases.append(text)
    out = pathlib.Path(__file__).resolve().parent.parent / "tests/data/tokenizer/corpus.jsonl"
    out.write_text("".join(json.dumps(case, ensure_ascii=False) + "\n" for case in cases), encoding="utf-8")
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
