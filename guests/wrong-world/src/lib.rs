//! A component that is well-formed but implements some other contract, as a vendor
//! who built against the wrong WIT would ship. The host must refuse it when linking.

wit_bindgen::generate!({
    inline: "
        package test:elsewhere@1.0.0;

        interface greeter {
            greet: func(name: string) -> string;
        }

        world other {
            export greeter;
        }
    ",
    world: "other",
});

struct Other;

impl exports::test::elsewhere::greeter::Guest for Other {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Other);
