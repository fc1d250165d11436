//! Behaviour tests of the whole language: parsing, precedence, checking, evaluation,
//! templates, and robustness against arbitrary input.

use serde_json::{Value, json};

use crate::*;

fn context() -> Context {
    Context {
        contact: json!({
            "id": "c1",
            "name": "Ada Lovelace",
            "phone": "+447700900123",
            "email": "ada@example.com",
            "tags": ["VIP", "newsletter"],
            "fields": {
                "age": 36,
                "plan": "pro",
                "score": 7.5,
                "subscribed": true,
                "birthday": "1815-12-10",
                "signed_up": "2024-04-01"
            }
        }),
        trigger: json!({
            "order_id": "A-1001",
            "total": 250,
            "items": [{"sku": "x1", "qty": 2}],
            "key with space": "yes",
            "created_at": "2024-05-01T10:00:00Z",
            "flag": false
        }),
        steps: json!({"ask": {"reply": "Yes please"}, "http": {"status": 200}}),
        // 2024-05-11T10:00:00Z
        now_ms: 1_715_421_600_000,
    }
}

fn schema() -> Schema {
    let mut schema = Schema::default();
    for (key, ty) in [
        ("age", FieldType::Number),
        ("plan", FieldType::Text),
        ("score", FieldType::Number),
        ("subscribed", FieldType::Bool),
        ("birthday", FieldType::Date),
        ("signed_up", FieldType::Date),
    ] {
        schema.contact_fields.insert(key.into(), ty);
    }
    schema
}

fn value(text: &str) -> Value {
    let expr = parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
    eval(&expr, &context()).unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn holds(text: &str) -> bool {
    match value(text) {
        Value::Bool(result) => result,
        other => panic!("{text} gave {other}, not a bool"),
    }
}

fn parse_error(text: &str) -> ExprError {
    match parse(text) {
        Ok(expr) => panic!("{text} parsed as {expr}"),
        Err(error) => error,
    }
}

fn check_error(text: &str) -> ExprError {
    let expr = parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
    match check(&expr, &schema()) {
        Ok(ty) => panic!("{text} checked as {ty}"),
        Err(error) => error,
    }
}

fn checks(text: &str) -> Type {
    let expr = parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
    check(&expr, &schema()).unwrap_or_else(|error| panic!("{text}: {error}"))
}

#[test]
fn literals() {
    assert_eq!(value("42"), json!(42));
    assert_eq!(value("-1.5"), json!(-1.5));
    assert_eq!(value("1e3"), json!(1000));
    assert_eq!(value("'it\\'s'"), json!("it's"));
    assert_eq!(value("\"dq \\\"x\\\"\""), json!("dq \"x\""));
    assert_eq!(value("true"), json!(true));
    assert_eq!(value("false"), json!(false));
    assert_eq!(value("null"), Value::Null);
    assert_eq!(value("['a', 1, [true], ]"), json!(["a", 1, [true]]));
    assert_eq!(value("[]"), json!([]));
}

#[test]
fn paths() {
    assert_eq!(value("contact.name"), json!("Ada Lovelace"));
    assert_eq!(value("contact.fields.age"), json!(36));
    assert_eq!(value("contact.tags"), json!(["VIP", "newsletter"]));
    assert_eq!(value("contact.tags[1]"), json!("newsletter"));
    assert_eq!(value("trigger.order_id"), json!("A-1001"));
    assert_eq!(value("trigger[\"key with space\"]"), json!("yes"));
    assert_eq!(value("trigger['key with space']"), json!("yes"));
    assert_eq!(value("trigger.items[0].qty"), json!(2));
    assert_eq!(value("steps.ask.reply"), json!("Yes please"));
    assert_eq!(value("trigger"), context().trigger);
    // Keywords are fine as keys after a dot.
    let context = Context {
        trigger: json!({"and": 1, "not-a-keyword": 2}),
        ..Context::default()
    };
    let expr = parse("trigger.and == 1 and trigger.not-a-keyword == 2").expect("parses");
    assert_eq!(eval(&expr, &context), Ok(json!(true)));
}

#[test]
fn missing_data_is_null() {
    assert_eq!(value("contact.fields.nope"), Value::Null);
    assert_eq!(value("trigger.a.b.c"), Value::Null);
    assert_eq!(value("trigger.items[5].sku"), Value::Null);
    assert_eq!(value("trigger.order_id.x"), Value::Null);
    assert_eq!(value("trigger.items.sku"), Value::Null);
    assert_eq!(value("steps.missing.reply"), Value::Null);
    assert!(holds("trigger.nope == null"));
    assert!(holds("null == null"));
    assert!(!holds("trigger.nope != null"));
    assert!(holds("trigger.order_id != null"));
    assert!(!holds("trigger.nope == 'x'"));
    assert!(holds("trigger.nope != 'x'"));
    for op in ["<", "<=", ">", ">="] {
        assert!(!holds(&format!("trigger.nope {op} 1")), "{op}");
        assert!(!holds(&format!("1 {op} trigger.nope")), "{op}");
    }
    assert!(!holds("trigger.nope contains 'a'"));
    assert!(!holds("'a' in trigger.nope"));
    assert!(!holds("trigger.nope starts_with 'a'"));
    assert!(!holds("trigger.nope ends_with 'a'"));
    assert!(!truthy(&value("trigger.nope")));
    // With no contact at all.
    let empty = Context::default();
    let expr = parse("contact.name == 'Ada' or contact.tags contains 'vip'").expect("parses");
    assert_eq!(eval(&expr, &empty), Ok(json!(false)));
}

#[test]
fn equality() {
    assert!(holds("contact.fields.age == 36"));
    assert!(holds("contact.fields.age == 36.0"));
    assert!(holds("contact.fields.age != 35"));
    assert!(holds("contact.name == 'Ada Lovelace'"));
    assert!(!holds("contact.name == 'ada lovelace'"));
    assert!(holds("contact.fields.subscribed == true"));
    assert!(holds("trigger.flag == false"));
    assert!(holds("contact.tags == ['VIP', 'newsletter']"));
    assert!(holds("trigger.items[0] == trigger.items[0]"));
    // Different kinds are never equal.
    assert!(!holds("trigger.total == '250'"));
    assert!(holds("trigger.total != '250'"));
}

#[test]
fn ordering() {
    assert!(holds("contact.fields.age > 18"));
    assert!(holds("contact.fields.age >= 36"));
    assert!(!holds("contact.fields.age < 36"));
    assert!(holds("contact.fields.age <= 36"));
    assert!(holds("contact.fields.score < 7.6"));
    assert!(holds("-1 < 0"));
    // Text orders by code point, which suits ISO dates.
    assert!(holds("contact.fields.signed_up > '2024-03-31'"));
    assert!(holds("'a' < 'b'"));
    // Mixed kinds never order.
    assert!(!holds("trigger.total > '1'"));
    assert!(!holds("trigger.flag < 1"));
}

#[test]
fn text_and_list_operators() {
    assert!(holds("contact.name contains 'LOVE'"));
    assert!(!holds("contact.name contains 'byron'"));
    assert!(holds("contact.tags contains 'vip'"));
    assert!(!holds("contact.tags contains 'vi'"));
    assert!(holds("'newsletter' in contact.tags"));
    assert!(holds("'NEWSLETTER' in contact.tags"));
    assert!(holds("contact.fields.plan in ['free', 'pro']"));
    assert!(!holds("contact.fields.plan in ['free', 'team']"));
    assert!(holds("contact.fields.plan not in ['free', 'team']"));
    assert!(!holds("contact.fields.plan not in ['pro']"));
    assert!(holds("36 in [1, 36.0]"));
    assert!(holds("'love' in contact.name"));
    assert!(holds("contact.email ends_with '@EXAMPLE.com'"));
    assert!(holds("contact.phone starts_with '+44'"));
    assert!(!holds("contact.phone starts_with '+1'"));
    assert!(!holds("contact.phone ends_with '+44'"));
    // Operators given values they cannot use are false.
    assert!(!holds("trigger.total contains 2"));
    assert!(!holds("trigger.total starts_with '2'"));
    assert!(!holds("trigger.items contains null"));
}

#[test]
fn boolean_logic_and_precedence() {
    assert!(
        holds("true or false and false"),
        "and binds tighter than or"
    );
    assert!(!holds("(true or false) and false"));
    assert!(!holds("not true and false"));
    assert!(holds("not false and true"));
    assert!(holds("not 1 == 2"), "not binds looser than comparison");
    assert!(holds("not not true"));
    assert!(holds("false or false or true"));
    assert!(!holds("true and true and false"));
    // and/or use truthiness and always give true/false.
    assert_eq!(value("contact.name and 1"), json!(true));
    assert_eq!(value("'' or 0 or [] or null"), json!(false));

    let shapes = [
        (
            "a_or_b_and_c",
            "trigger.a or trigger.b and trigger.c",
            "trigger.a or trigger.b and trigger.c",
        ),
        (
            "grouped",
            "(trigger.a or trigger.b) and trigger.c",
            "(trigger.a or trigger.b) and trigger.c",
        ),
        ("not_cmp", "not trigger.a == 1", "not trigger.a == 1"),
        (
            "not_group",
            "not (trigger.a and trigger.b)",
            "not (trigger.a and trigger.b)",
        ),
        ("redundant", "((trigger.a))", "trigger.a"),
        (
            "cmp_group",
            "(trigger.a == 1) == true",
            "(trigger.a == 1) == true",
        ),
        ("not_in", "trigger.a not in ['x']", "trigger.a not in ['x']"),
    ];
    for (name, text, canonical) in shapes {
        let expr = parse(text).expect(name);
        assert_eq!(expr.to_string(), canonical, "{name}");
        let again = parse(canonical).expect(name);
        assert_eq!(again.to_string(), canonical, "{name}");
    }
    let expr = parse("trigger.a or trigger.b and trigger.c").expect("parses");
    let ExprKind::Or(items) = expr.kind() else {
        panic!("top is not `or`: {expr:?}");
    };
    assert!(matches!(
        items.as_slice(),
        [
            _,
            Expr {
                kind: ExprKind::And(_),
                ..
            }
        ]
    ));
}

#[test]
fn functions() {
    assert_eq!(value("lower(contact.name)"), json!("ada lovelace"));
    assert_eq!(value("upper('straße')"), json!("STRASSE"));
    assert_eq!(value("lower(trigger.total)"), json!(250));
    assert_eq!(value("len(contact.name)"), json!(12));
    assert_eq!(value("len('é')"), json!(1));
    assert_eq!(value("len(contact.tags)"), json!(2));
    assert_eq!(value("len(trigger.items[0])"), json!(2));
    assert_eq!(value("len(trigger.nope)"), json!(0));
    assert_eq!(value("len(trigger.total)"), Value::Null);
    assert_eq!(value("exists(contact.fields.plan)"), json!(true));
    assert_eq!(value("exists(contact.fields.nope)"), json!(false));
    assert_eq!(value("exists(trigger.flag)"), json!(true));
    assert_eq!(value("number('42')"), json!(42));
    assert_eq!(value("number(' 2.5 ')"), json!(2.5));
    assert_eq!(value("number('abc')"), Value::Null);
    assert_eq!(value("number('inf')"), Value::Null);
    assert_eq!(value("number(true)"), json!(1));
    assert_eq!(value("number(trigger.total)"), json!(250));
    assert_eq!(value("number(null)"), Value::Null);
    assert!(holds("number(steps.ask.reply) == null"));
    assert_eq!(value("days_since(trigger.created_at)"), json!(10));
    assert_eq!(value("days_since(contact.fields.signed_up)"), json!(40));
    assert_eq!(value("days_since(1715335200000)"), json!(1));
    assert_eq!(value("days_since('1715335200000')"), json!(1));
    assert_eq!(value("days_since('2024-05-12')"), json!(-1));
    assert_eq!(value("days_since('someday')"), Value::Null);
    assert_eq!(value("days_since(trigger.nope)"), Value::Null);
    assert!(holds("days_since(contact.fields.birthday) > 70000"));
}

#[test]
fn parse_errors_say_what_to_fix_and_where() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "contact.name and",
            16,
            "expected a value after `and`, but the expression ends",
        ),
        (
            "contact.name == 'x' and or true",
            24,
            "expected a value after `and`, found `or`",
        ),
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("contact.name ==", 15, "expected a value after `==`"),
        (
            "(contact.name == 'x'",
            20,
            "expected `)` to close the `(` opened at 0",
        ),
        ("contact.name == 'x')", 19, "closes nothing"),
        ("[1, 2", 5, "expected `]` to close the list opened at 0"),
        (
            "contact.name 'x'",
            13,
            "unexpected `'x'` after `contact.name`",
        ),
        ("name == 'x'", 0, "unknown name `name`: paths start with"),
        ("contact.name == Ada", 16, "text needs quotes, e.g. 'Ada'"),
        ("contact.name == 'x' AND true", 20, "unexpected `AND`"),
        ("AND", 0, "lower case, write `and`"),
        ("Contact.name", 0, "lower case, write `contact`"),
        (
            "foo(1)",
            0,
            "unknown function `foo`: use `lower`, `upper`, `len`, `exists`, `number`, `days_since`",
        ),
        (
            "lower()",
            0,
            "`lower` takes exactly 1 argument, but 0 were given",
        ),
        ("lower('a', 'b')", 0, "but 2 were given"),
        ("exists('x')", 7, "`exists` takes a path"),
        ("1 < 2 < 3", 6, "compare two values at a time"),
        ("contact.", 8, "expected a name after `.`"),
        ("trigger[true]", 8, "expected a quoted key"),
        ("trigger[-1]", 8, "expected a quoted key"),
        ("trigger['a'", 11, "expected `]`"),
        ("a = 1", 2, "write `==`"),
        ("contact.name == 'x", 16, "never closed"),
        ("1 2", 2, "unexpected `2`"),
        ("not", 3, "expected a value after `not`"),
    ];
    for (text, offset, message) in cases {
        let error = parse_error(text);
        assert!(
            error.message.contains(message),
            "{text}: `{}` does not contain `{message}`",
            error.message
        );
        assert_eq!(error.offset, *offset, "{text}: {error}");
        assert_eq!(error.to_string(), format!("{} at {offset}", error.message));
    }
}

#[test]
fn types_are_inferred() {
    assert_eq!(checks("contact.fields.age > 3"), Type::Bool);
    assert_eq!(checks("trigger.flag"), Type::Any);
    assert_eq!(checks("steps.ask.confirmed"), Type::Any);
    assert_eq!(checks("exists(contact.fields.plan)"), Type::Bool);
    assert_eq!(checks("contact.fields.subscribed"), Type::Bool);
    assert_eq!(
        checks("contact.tags contains 'vip' and contact.name != ''"),
        Type::Bool
    );
    assert_eq!(checks("contact.fields.birthday < '2000-01-01'"), Type::Bool);
    assert_eq!(
        checks("days_since(contact.fields.signed_up) >= 30"),
        Type::Bool
    );
    assert_eq!(
        checks("len(contact.tags) > 0 and len(contact.name) < 100"),
        Type::Bool
    );
    assert_eq!(checks("number(trigger.total) > 100"), Type::Bool);
    assert_eq!(checks("lower(contact.name) starts_with 'a'"), Type::Bool);
    assert_eq!(checks("contact.tags[0] == 'vip'"), Type::Bool);
    assert_eq!(checks("contact.fields.plan in ['pro', 'team']"), Type::Bool);
    assert_eq!(checks("'pro' in contact.fields.plan"), Type::Bool);
    assert_eq!(checks("contact.fields.age == null"), Type::Bool);
    assert_eq!(
        checks("trigger.total == 'x' or trigger.total > 3"),
        Type::Bool
    );
    let schema = schema();
    let ty = |text: &str| infer(&parse(text).expect("parses"), &schema).expect("checks");
    assert_eq!(ty("contact.name"), Type::Text);
    assert_eq!(ty("contact.fields.age"), Type::Number);
    assert_eq!(ty("contact.tags"), Type::List);
    assert_eq!(ty("['a']"), Type::List);
    assert_eq!(ty("upper(trigger.x)"), Type::Text);
    assert_eq!(ty("contact.fields"), Type::Any);
}

#[test]
fn type_errors_point_at_the_mistake() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "contact.fields.age == '30'",
            22,
            "`contact.fields.age` is a number but `'30'` is text: write the number without quotes, 30",
        ),
        (
            "'30' == contact.fields.age",
            0,
            "write the number without quotes",
        ),
        ("contact.name == 5", 16, "put the value in quotes, '5'"),
        (
            "contact.fields.subscribed == 'true'",
            29,
            "write true without quotes",
        ),
        (
            "contact.fields.age > 'x'",
            21,
            "is a number but `'x'` is text",
        ),
        (
            "contact.tags > 1",
            0,
            "`>` orders numbers or text, but `contact.tags` is a list",
        ),
        (
            "contact.fields.age contains 3",
            0,
            "`contains` needs text or a list on its left, but `contact.fields.age` is a number",
        ),
        (
            "contact.name contains 3",
            22,
            "`contains` on text needs text",
        ),
        ("'a' in 3", 7, "`in` needs a list on its right"),
        ("5 in contact.name", 0, "`in` on text needs text"),
        (
            "contact.fields.age starts_with '3'",
            0,
            "`starts_with` needs text",
        ),
        (
            "contact.fields.plna == 'pro'",
            0,
            "unknown contact field `plna`; the known fields are `age`, `birthday`, `plan`, `score`, `signed_up`, `subscribed`",
        ),
        (
            "contact.nmae == 'x'",
            0,
            "unknown contact attribute `nmae`: use contact.id, contact.name",
        ),
        ("contact == 'x'", 0, "`contact` alone is not a value"),
        (
            "contact.name.first == 'x'",
            0,
            "`contact.name` is text; it has nothing inside",
        ),
        (
            "contact.fields.age.x == 1",
            0,
            "`contact.fields.age` is a number",
        ),
        (
            "contact.fields[0] == 1",
            0,
            "`contact.fields` is not a list",
        ),
        ("contact[0] == 1", 0, "`contact` is not a list"),
        (
            "contact.name",
            0,
            "a condition must be true or false, but `contact.name` is text: compare it, e.g. `contact.name != ''`",
        ),
        ("contact.fields.age", 0, "e.g. `contact.fields.age > 0`"),
        ("contact.tags", 0, "e.g. `contact.tags contains 'vip'`"),
        ("len(contact.tags)", 0, "is a number"),
        (
            "true and contact.name",
            9,
            "`and` needs true/false, but `contact.name` is text",
        ),
        ("contact.name or true", 0, "`or` needs true/false"),
        (
            "not contact.fields.age",
            4,
            "`not` needs true/false, but `contact.fields.age` is a number",
        ),
        ("lower(contact.fields.age) == 'x'", 6, "`lower` needs text"),
        ("len(contact.fields.age) > 1", 4, "`len` counts"),
        (
            "days_since(contact.tags) > 1",
            11,
            "`days_since` takes a date",
        ),
        (
            "exists(contact.fields.nope)",
            7,
            "unknown contact field `nope`",
        ),
        (
            "trigger.x == 1 and (contact.fields.age == 'x')",
            42,
            "== compares values of the same kind",
        ),
        (
            "['a', contact.bad] contains 'a'",
            6,
            "unknown contact attribute `bad`",
        ),
    ];
    for (text, offset, message) in cases {
        let error = check_error(text);
        assert!(
            error.message.contains(message),
            "{text}: `{}` does not contain `{message}`",
            error.message
        );
        assert_eq!(error.offset, *offset, "{text}: {error}");
    }
    let expr = parse("contact.fields.plan == 'x'").expect("parses");
    let error = check(&expr, &Schema::default()).expect_err("no fields");
    assert!(
        error
            .message
            .contains("no custom contact fields are defined"),
        "{error}"
    );
}

#[test]
fn paths_are_listed() {
    let expr =
        parse("steps.ask.reply == 'yes' and (exists(trigger.id) or contact.tags contains 'x')")
            .expect("parses");
    let paths: Vec<String> = expr.paths().iter().map(ToString::to_string).collect();
    assert_eq!(paths, ["steps.ask.reply", "trigger.id", "contact.tags"]);
    assert_eq!(expr.paths()[0].first_key(), Some("ask"));
    assert_eq!(expr.paths()[1].offset, 37);
    let odd = parse("trigger['a b'][2].c").expect("parses");
    assert_eq!(odd.paths()[0].to_string(), "trigger['a b'][2].c");
}

#[test]
fn templates() {
    let context = context();
    assert_eq!(
        render_template(
            "Hi {{contact.name}}, order {{ trigger.order_id }} ({{trigger.total}}) {{steps.ask.reply}}.",
            &context
        ),
        "Hi Ada Lovelace, order A-1001 (250) Yes please."
    );
    assert_eq!(
        render_template("{{trigger.flag}}/{{trigger.items}}", &context),
        "false/[{\"qty\":2,\"sku\":\"x1\"}]"
    );
    assert_eq!(render_template("[{{contact.fields.nope}}]", &context), "[]");
    assert_eq!(
        render_template("{{trigger[\"key with space\"]}}", &context),
        "yes"
    );
    assert_eq!(
        render_template("no placeholders", &context),
        "no placeholders"
    );
    assert_eq!(render_template("", &context), "");
    // Malformed placeholders stay as written; an unclosed one too.
    assert_eq!(
        render_template("a {{ nope }} b {{contact.name}}", &context),
        "a {{ nope }} b Ada Lovelace"
    );
    assert_eq!(
        render_template("a {{contact.name", &context),
        "a {{contact.name"
    );
    assert_eq!(render_template("{{}}x}}", &context), "{{}}x}}");
    assert_eq!(render_template("é{{contact.id}}ü", &context), "éc1ü");

    assert_eq!(
        render_template_value("{{trigger.total}}", &context),
        json!(250)
    );
    assert_eq!(
        render_template_value(" {{ trigger.items[0] }} ", &context),
        json!({"sku": "x1", "qty": 2})
    );
    assert_eq!(
        render_template_value("{{trigger.nope}}", &context),
        Value::Null
    );
    assert_eq!(
        render_template_value("#{{trigger.total}}", &context),
        json!("#250")
    );
    assert_eq!(
        render_template_value("{{trigger.total}}{{trigger.total}}", &context),
        json!("250250")
    );

    let paths = template_paths("Hi {{contact.name}} {{ steps.ask.reply }}").expect("valid");
    let names: Vec<String> = paths.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["contact.name", "steps.ask.reply"]);
    assert_eq!(paths[1].offset, 23);
    assert_eq!(template_paths("plain"), Ok(Vec::new()));
    let errors: &[(&str, usize, &str)] = &[
        ("Hi {{contact.name", 3, "never closed"),
        ("Hi {{ name }}", 6, "`name` is not a path"),
        ("Hi {{}}", 3, "empty"),
        (
            "{{contact.name == 'x'}}",
            15,
            "unexpected `==` after `contact.name`",
        ),
        ("{{ 'x' }}", 3, "is not a path"),
        ("{{contact.}}", 10, "expected a name after `.`"),
        ("{{ contact.name ' }}", 16, "never closed"),
    ];
    for (text, offset, message) in errors {
        let error = template_paths(text).expect_err(text);
        assert!(error.message.contains(message), "{text}: {}", error.message);
        assert_eq!(error.offset, *offset, "{text}: {error}");
    }
}

#[test]
fn truthiness() {
    for (value, expected) in [
        (json!(null), false),
        (json!(false), false),
        (json!(true), true),
        (json!(0), false),
        (json!(0.0), false),
        (json!(-1), true),
        (json!(""), false),
        (json!("no"), true),
        (json!([]), false),
        (json!([0]), true),
        (json!({}), false),
        (json!({"a": 1}), true),
    ] {
        assert_eq!(truthy(&value), expected, "{value}");
    }
}

fn nested(open: &str, close: &str, depth: usize) -> String {
    format!("{}true{}", open.repeat(depth), close.repeat(depth))
}

#[test]
fn nesting_is_limited_instead_of_overflowing_the_stack() {
    for (open, close) in [("(", ")"), ("not ", ""), ("[", "]"), ("lower(", ")")] {
        let ok = nested(open, close, MAX_DEPTH);
        assert!(parse(&ok).is_ok(), "{open}: {MAX_DEPTH} levels are allowed");
        let error = parse_error(&nested(open, close, MAX_DEPTH + 1));
        assert!(
            error.message.contains("nests more than 64 levels"),
            "{error}"
        );
        // Far deeper input is refused the same way, without exhausting the stack.
        let error = parse_error(&nested(open, close, 5_000));
        assert!(
            error.message.contains("nests more than 64 levels"),
            "{error}"
        );
    }
    // Mixed nesting counts every level.
    let mixed = format!("{}true{}", "(not [".repeat(22), "])".repeat(22));
    assert!(parse_error(&mixed).message.contains("nests more than"));
    // Long flat chains are not nesting: they stay one level deep.
    let chain = vec!["trigger.a == 1"; 3000].join(" or ");
    let expr = parse(&chain).expect("a long chain parses");
    assert_eq!(eval(&expr, &context()), Ok(json!(false)));
    assert_eq!(check(&expr, &schema()), Ok(Type::Bool));
    let list = format!("[{}]", vec!["1"; 5000].join(","));
    assert!(parse(&list).is_ok());
    // Too long a text is refused before lexing.
    let long = format!("'{}'", "x".repeat(MAX_LENGTH));
    assert!(parse_error(&long).message.contains("longer than"));
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        // The remainder is below `n`, which is a usize.
        usize::try_from(self.next() % (n as u64)).unwrap_or(0)
    }
}

const FRAGMENTS: &[&str] = &[
    "contact",
    "trigger",
    "steps",
    ".",
    "name",
    "fields",
    "age",
    "plan",
    "tags",
    "[",
    "]",
    "(",
    ")",
    ",",
    "'",
    "\"",
    "\\",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "!",
    "and",
    "or",
    "not",
    "in",
    "contains",
    "starts_with",
    "ends_with",
    "true",
    "false",
    "null",
    "1",
    "-2.5",
    "1e400",
    "lower",
    "upper",
    "len",
    "exists",
    "number",
    "days_since",
    "'x'",
    "\"y\"",
    " ",
    " ",
    "é",
    "{{",
    "}}",
    "0",
    "-",
    "e",
    "_",
    "\u{0}",
    "\n",
    "ü'",
    "9999999999999999999999",
    "[0]",
];

fn exercise(text: &str) {
    let context = context();
    let schema = schema();
    if let Ok(expr) = parse(text) {
        let _ = check(&expr, &schema);
        let _ = infer(&expr, &schema);
        let _ = eval(&expr, &context).map(|value| truthy(&value));
        // What `Display` writes parses back to the same meaning.
        let written = expr.to_string();
        let reparsed =
            parse(&written).unwrap_or_else(|error| panic!("{text} → {written}: {error}"));
        assert_eq!(reparsed.to_string(), written, "{text}");
        assert_eq!(eval(&reparsed, &context), eval(&expr, &context), "{text}");
    }
    let _ = render_template(text, &context);
    let _ = render_template_value(text, &context);
    let _ = template_paths(text);
    let _ = timestamp_ms(text);
}

#[test]
fn random_input_never_panics() {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let count = random.below(12);
        let text: String = (0..count)
            .map(|_| FRAGMENTS[random.below(FRAGMENTS.len())])
            .collect::<Vec<_>>()
            .join(if random.below(2) == 0 { " " } else { "" });
        exercise(&text);
    }
    // Mutations of valid expressions: cut, duplicate and swap characters.
    let seeds = [
        "contact.fields.age >= 18 and not (contact.tags contains 'vip' or trigger.x in [1, 'b'])",
        "days_since(contact.fields.signed_up) > 30 or lower(trigger[\"a b\"]) starts_with 'x'",
        "Hi {{contact.name}}, {{ steps.ask.reply }} {{trigger['k']}}",
    ];
    for seed in seeds {
        let chars: Vec<char> = seed.chars().collect();
        for _ in 0..5_000 {
            let mut mutated = chars.clone();
            for _ in 0..=random.below(3) {
                let at = random.below(mutated.len().max(1));
                match random.below(3) {
                    0 if !mutated.is_empty() => {
                        mutated.remove(at.min(mutated.len() - 1));
                    }
                    1 => {
                        let c = chars[random.below(chars.len())];
                        mutated.insert(at.min(mutated.len()), c);
                    }
                    _ => {
                        let other = random.below(mutated.len().max(1));
                        if at < mutated.len() && other < mutated.len() {
                            mutated.swap(at, other);
                        }
                    }
                }
            }
            exercise(&mutated.into_iter().collect::<String>());
        }
    }
    // Every byte string that is valid UTF-8, short ones exhaustively over a small alphabet.
    let alphabet = [
        '(', ')', '[', ']', '\'', 'a', '.', '1', ' ', 'n', '{', '}', '<', '=',
    ];
    for a in alphabet {
        for b in alphabet {
            for c in alphabet {
                for d in alphabet {
                    exercise(&[a, b, c, d].iter().collect::<String>());
                }
            }
        }
    }
}
