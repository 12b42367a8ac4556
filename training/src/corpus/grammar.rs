//! The kiosk-domain grammar: templates with typed slots that produce English–French pairs with
//! exact translations on both sides.
//!
//! Every template is written once for both languages; slot values carry what French agreement
//! needs (gender, number, a vowel or mute h for elision), so articles and contractions
//! (`le`/`la`/`l'`/`les`, `au`/`à la`/`à l'`/`aux`, `du`/`de la`/`de l'`/`des`), possessives
//! (`mon`/`ma`/`mes`, `mon écharpe`), verbs (`est`/`sont`, `ouvre`/`ouvrent`), past participles
//! (`annulé`/`annulée`) and feminine numbers (`une minute`, `vingt et une heures`) come out right.
//! Numbers that people say are spelled out (times, prices, counts); platform numbers are digits,
//! as on the signs (espeak-ng reads them in each language).
//!
//! [`all_pairs`] enumerates every reachable pair in a fixed order (no randomness here); the
//! corpus builder samples from it.

/// One parallel sentence pair and the template and slot values it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Template id, e.g. `relative_position`.
    pub template: &'static str,
    /// `(slot name, value key)` for every slot filled, in template order.
    pub slots: Vec<(&'static str, String)>,
    pub en: String,
    pub fr: String,
}

/// A noun with what French agreement needs.
#[derive(Debug, Clone, Copy)]
struct Noun {
    key: &'static str,
    /// English without article.
    en: &'static str,
    /// English takes a plural verb ("the toilets are").
    en_pl: bool,
    /// French without article.
    fr: &'static str,
    fem: bool,
    pl: bool,
    /// Starts with a vowel or a mute h: elision (`l'`, `de l'`, `mon` before a feminine noun).
    vowel: bool,
}

const fn n(
    key: &'static str,
    en: &'static str,
    en_pl: bool,
    fr: &'static str,
    fem: bool,
    pl: bool,
    vowel: bool,
) -> Noun {
    Noun {
        key,
        en,
        en_pl,
        fr,
        fem,
        pl,
        vowel,
    }
}

impl Noun {
    /// The noun after the article form its number, elision and gender call for:
    /// `[plural, elided, feminine, masculine]`.
    fn with_article(&self, [pl, elided, fem, masc]: [&str; 4]) -> String {
        let article = if self.pl {
            pl
        } else if self.vowel {
            elided
        } else if self.fem {
            fem
        } else {
            masc
        };
        format!("{article}{}", self.fr)
    }
    /// `la gare`, `l'aéroport`, `les toilettes`.
    fn le(&self) -> String {
        self.with_article(["les ", "l'", "la ", "le "])
    }
    /// `à la gare`, `au musée`, `à l'hôtel`, `aux toilettes`.
    fn au(&self) -> String {
        self.with_article(["aux ", "à l'", "à la ", "au "])
    }
    /// `de la gare`, `du musée`, `de l'hôtel`, `des toilettes`.
    fn du(&self) -> String {
        self.with_article(["des ", "de l'", "de la ", "du "])
    }
    /// `ma valise`, `mon sac`, `mon écharpe`, `mes clés`.
    fn mon(&self) -> String {
        if self.pl {
            format!("mes {}", self.fr)
        } else if self.fem && !self.vowel {
            format!("ma {}", self.fr)
        } else {
            format!("mon {}", self.fr)
        }
    }
    /// `votre valise`, `vos clés`.
    fn votre(&self) -> String {
        if self.pl {
            format!("vos {}", self.fr)
        } else {
            format!("votre {}", self.fr)
        }
    }
    /// `est` / `sont`.
    fn est(&self) -> &'static str {
        if self.pl {
            "sont"
        } else {
            "est"
        }
    }
    /// `is` / `are`.
    fn is(&self) -> &'static str {
        if self.en_pl {
            "are"
        } else {
            "is"
        }
    }
    /// Article before an adjective placed after the noun: `la plus proche`.
    fn adj_article(&self) -> &'static str {
        if self.pl {
            "les"
        } else if self.fem {
            "la"
        } else {
            "le"
        }
    }
    /// Agrees a regular adjective or participle: `annulé` -> `annulée`, `annulés`, `annulées`.
    fn agree(&self, masc_sg: &str) -> String {
        let mut s = masc_sg.to_string();
        if self.fem {
            s.push('e');
        }
        if self.pl {
            s.push('s');
        }
        s
    }
}

const PLACES: &[Noun] = &[
    n("station", "station", false, "gare", true, false, false),
    n("airport", "airport", false, "aéroport", false, false, true),
    n("museum", "museum", false, "musée", false, false, false),
    n("hospital", "hospital", false, "hôpital", false, false, true),
    n(
        "post_office",
        "post office",
        false,
        "bureau de poste",
        false,
        false,
        false,
    ),
    n(
        "town_hall",
        "town hall",
        false,
        "mairie",
        true,
        false,
        false,
    ),
    n(
        "cathedral",
        "cathedral",
        false,
        "cathédrale",
        true,
        false,
        false,
    ),
    n("beach", "beach", false, "plage", true, false, false),
    n(
        "bus_stop",
        "bus stop",
        false,
        "arrêt de bus",
        false,
        false,
        true,
    ),
    n("exit", "exit", false, "sortie", true, false, false),
    n("toilets", "toilets", true, "toilettes", true, true, false),
    n(
        "ticket_office",
        "ticket office",
        false,
        "guichet",
        false,
        false,
        false,
    ),
    n(
        "pharmacy",
        "pharmacy",
        false,
        "pharmacie",
        true,
        false,
        false,
    ),
    n("hotel", "hotel", false, "hôtel", false, false, true),
    n("market", "market", false, "marché", false, false, false),
    n(
        "library",
        "library",
        false,
        "bibliothèque",
        true,
        false,
        false,
    ),
    n("lifts", "lifts", true, "ascenseurs", false, true, true),
    n(
        "information_desk",
        "information desk",
        false,
        "accueil",
        false,
        false,
        true,
    ),
    n(
        "car_park", "car park", false, "parking", false, false, false,
    ),
    n(
        "university",
        "university",
        false,
        "université",
        true,
        false,
        true,
    ),
    n("stadium", "stadium", false, "stade", false, false, false),
    n("harbour", "harbour", false, "port", false, false, false),
    n("cinema", "cinema", false, "cinéma", false, false, false),
    n(
        "taxi_rank",
        "taxi rank",
        false,
        "station de taxis",
        true,
        false,
        false,
    ),
    n(
        "left_luggage",
        "left luggage office",
        false,
        "consigne",
        true,
        false,
        false,
    ),
    n(
        "waiting_room",
        "waiting room",
        false,
        "salle d'attente",
        true,
        false,
        false,
    ),
    n(
        "escalators",
        "escalators",
        true,
        "escaliers mécaniques",
        false,
        true,
        true,
    ),
    n("shops", "shops", true, "magasins", false, true, false),
];

/// Places with opening hours.
const OPENING_PLACES: &[&str] = &[
    "museum",
    "post_office",
    "town_hall",
    "pharmacy",
    "library",
    "market",
    "ticket_office",
    "left_luggage",
    "shops",
    "cinema",
    "information_desk",
];

const ITEMS: &[Noun] = &[
    n("suitcase", "suitcase", false, "valise", true, false, false),
    n("bag", "bag", false, "sac", false, false, false),
    n(
        "backpack",
        "backpack",
        false,
        "sac à dos",
        false,
        false,
        false,
    ),
    n(
        "wallet",
        "wallet",
        false,
        "portefeuille",
        false,
        false,
        false,
    ),
    n(
        "passport",
        "passport",
        false,
        "passeport",
        false,
        false,
        false,
    ),
    n("phone", "phone", false, "téléphone", false, false, false),
    n("keys", "keys", true, "clés", true, true, false),
    n("glasses", "glasses", true, "lunettes", true, true, false),
    n("scarf", "scarf", false, "écharpe", true, false, true),
    n(
        "umbrella",
        "umbrella",
        false,
        "parapluie",
        false,
        false,
        false,
    ),
    n("jacket", "jacket", false, "veste", true, false, false),
    n(
        "camera",
        "camera",
        false,
        "appareil photo",
        false,
        false,
        true,
    ),
    n("watch", "watch", false, "montre", true, false, false),
    n(
        "identity_card",
        "identity card",
        false,
        "carte d'identité",
        true,
        false,
        false,
    ),
    n("luggage", "luggage", false, "bagages", false, true, false),
];

/// Items one may leave at a left-luggage desk.
const STORABLE: &[&str] = &[
    "suitcase", "bag", "backpack", "umbrella", "luggage", "jacket",
];

const VEHICLES: &[Noun] = &[
    n("train", "train", false, "train", false, false, false),
    n("bus", "bus", false, "bus", false, false, false),
    n("tram", "tram", false, "tram", false, false, false),
    n("ferry", "ferry", false, "ferry", false, false, false),
    n("shuttle", "shuttle", false, "navette", true, false, false),
    n(
        "cable_car",
        "cable car",
        false,
        "télécabine",
        true,
        false,
        false,
    ),
];

/// Tickets: key, English singular and plural, French singular and plural, feminine.
const TICKETS: &[(&str, &str, &str, &str, &str, bool)] = &[
    ("ticket", "ticket", "tickets", "billet", "billets", false),
    ("seat", "seat", "seats", "place", "places", true),
    (
        "return",
        "return ticket",
        "return tickets",
        "aller-retour",
        "allers-retours",
        false,
    ),
    (
        "single",
        "single ticket",
        "single tickets",
        "aller simple",
        "allers simples",
        false,
    ),
    (
        "child",
        "child ticket",
        "child tickets",
        "billet enfant",
        "billets enfant",
        false,
    ),
    (
        "reservation",
        "reservation",
        "reservations",
        "réservation",
        "réservations",
        true,
    ),
];

/// Cities: English name, French name.
const CITIES: &[(&str, &str)] = &[
    ("Paris", "Paris"),
    ("Lyon", "Lyon"),
    ("Marseille", "Marseille"),
    ("Bordeaux", "Bordeaux"),
    ("Lille", "Lille"),
    ("Nantes", "Nantes"),
    ("Strasbourg", "Strasbourg"),
    ("Toulouse", "Toulouse"),
    ("Nice", "Nice"),
    ("Rennes", "Rennes"),
    ("Brussels", "Bruxelles"),
    ("Geneva", "Genève"),
    ("London", "Londres"),
    ("Avignon", "Avignon"),
    ("Dijon", "Dijon"),
    ("Grenoble", "Grenoble"),
];

/// Relative positions: English, French preposition, whether French takes `de` (contracted).
const RELATIONS: &[(&str, &str, &str, bool)] = &[
    ("next_to", "next to", "à côté", true),
    ("opposite", "opposite", "en face", true),
    ("near", "near", "près", true),
    ("behind", "behind", "derrière", false),
    ("in_front_of", "in front of", "devant", false),
];

const DIRECTIONS: &[(&str, &str, &str)] = &[
    ("left", "on the left", "à gauche"),
    ("right", "on the right", "à droite"),
    ("ahead", "straight ahead", "tout droit"),
    ("upstairs", "upstairs", "en haut"),
    ("downstairs", "downstairs", "en bas"),
    (
        "corridor",
        "at the end of the corridor",
        "au bout du couloir",
    ),
    ("first_floor", "on the first floor", "au premier étage"),
    ("across", "across the street", "de l'autre côté de la rue"),
];

const GREETINGS: &[(&str, &str, &str)] = &[
    ("hello", "Hello", "Bonjour"),
    ("excuse_me", "Excuse me", "Excusez-moi"),
    ("good_evening", "Good evening", "Bonsoir"),
];

const PHRASES: &[(&str, &str)] = &[
    ("Hello.", "Bonjour."),
    ("Good evening.", "Bonsoir."),
    ("Goodbye.", "Au revoir."),
    ("Thank you very much.", "Merci beaucoup."),
    ("Excuse me.", "Excusez-moi."),
    ("Do you speak English?", "Parlez-vous anglais ?"),
    ("Do you speak French?", "Parlez-vous français ?"),
    ("I need help.", "J'ai besoin d'aide."),
    (
        "Please call a doctor.",
        "Appelez un médecin, s'il vous plaît.",
    ),
    (
        "Can you repeat that, please?",
        "Pouvez-vous répéter, s'il vous plaît ?",
    ),
    ("I do not understand.", "Je ne comprends pas."),
    (
        "Please speak more slowly.",
        "Parlez plus lentement, s'il vous plaît.",
    ),
    (
        "Where can I buy a ticket?",
        "Où puis-je acheter un billet ?",
    ),
    ("Can I pay by card?", "Puis-je payer par carte ?"),
    ("Is there free wifi here?", "Y a-t-il du wifi gratuit ici ?"),
    ("Have a good trip.", "Bon voyage."),
    ("You are welcome.", "Je vous en prie."),
    ("What time is it?", "Quelle heure est-il ?"),
    ("Is this seat free?", "Cette place est-elle libre ?"),
];

/// Minute counts for walking distances and delays.
const WALK_MINUTES: std::ops::RangeInclusive<u32> = 1..=30;
const DELAY_MINUTES: &[u32] = &[1, 2, 3, 5, 10, 15, 20, 21, 25, 30, 40, 45, 50, 60];
/// Prices as (euros, cents).
const PRICES: &[(u32, u32)] = &[
    (1, 0),
    (1, 50),
    (2, 80),
    (4, 20),
    (7, 50),
    (9, 90),
    (12, 0),
    (15, 50),
    (19, 0),
    (21, 0),
    (23, 40),
    (31, 0),
    (38, 50),
    (45, 0),
    (54, 20),
    (61, 0),
    (71, 50),
    (80, 0),
    (81, 30),
    (99, 0),
];
const DEPARTURE_HOURS: &[u32] = &[
    1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];
const DEPARTURE_MINUTES: &[u32] = &[0, 5, 15, 30, 45, 50];

const EN_ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const EN_TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
const FR_ONES: [&str; 20] = [
    "zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze",
    "douze", "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit", "dix-neuf",
];
const FR_TENS: [&str; 7] = [
    "",
    "",
    "vingt",
    "trente",
    "quarante",
    "cinquante",
    "soixante",
];

/// English words for 0..=99 (`twenty-one`).
pub fn en_number(n: u32) -> String {
    assert!(n < 100, "en_number covers 0..=99");
    match n {
        0..=19 => EN_ONES[n as usize].to_string(),
        _ if n.is_multiple_of(10) => EN_TENS[(n / 10) as usize].to_string(),
        _ => format!(
            "{}-{}",
            EN_TENS[(n / 10) as usize],
            EN_ONES[(n % 10) as usize]
        ),
    }
}

/// French words for 0..=99 in the traditional spelling (`vingt et un`, `soixante et onze`,
/// `quatre-vingts`, `quatre-vingt-un`); `fem` gives `une` for a feminine noun.
pub fn fr_number(n: u32, fem: bool) -> String {
    assert!(n < 100, "fr_number covers 0..=99");
    let one = if fem { "une" } else { "un" };
    let unit = |u: u32| if u == 1 { one } else { FR_ONES[u as usize] };
    match n {
        0..=19 => unit(n).to_string(),
        20..=69 => {
            let (t, u) = (FR_TENS[(n / 10) as usize], n % 10);
            match u {
                0 => t.to_string(),
                1 => format!("{t} et {one}"),
                _ => format!("{t}-{}", FR_ONES[u as usize]),
            }
        }
        71 => "soixante et onze".to_string(),
        70..=79 => format!("soixante-{}", FR_ONES[(n - 60) as usize]),
        80 => "quatre-vingts".to_string(),
        _ => format!("quatre-vingt-{}", unit(n - 80)),
    }
}

/// A clock time (24-hour) as said in train announcements: English `twenty-one fifteen`,
/// `nine oh five`, `nine o'clock`, `seventeen hundred`; French `vingt et une heures quinze`.
pub fn time_words(h: u32, m: u32) -> (String, String) {
    let en = match m {
        0 if h <= 12 => format!("{} o'clock", en_number(h)),
        0 => format!("{} hundred", en_number(h)),
        1..=9 => format!("{} oh {}", en_number(h), en_number(m)),
        _ => format!("{} {}", en_number(h), en_number(m)),
    };
    let heures = if h > 1 { "heures" } else { "heure" };
    let fr = match m {
        0 => format!("{} {heures}", fr_number(h, true)),
        _ => format!("{} {heures} {}", fr_number(h, true), fr_number(m, false)),
    };
    (en, fr)
}

/// A price in euros: `twelve euros fifty` / `douze euros cinquante`, `one euro` / `un euro`.
pub fn price_words(euros: u32, cents: u32) -> (String, String) {
    let (en_unit, fr_unit) = if euros == 1 {
        ("euro", "euro")
    } else {
        ("euros", "euros")
    };
    let mut en = format!("{} {en_unit}", en_number(euros));
    let mut fr = format!("{} {fr_unit}", fr_number(euros, false));
    if cents > 0 {
        en = format!("{en} {}", en_number(cents));
        fr = format!("{fr} {}", fr_number(cents, false));
    }
    (en, fr)
}

/// `N minutes` / `N minutes` with `one minute` / `une minute`.
fn minutes_words(m: u32) -> (String, String) {
    let (en_u, fr_u) = if m == 1 {
        ("minute", "minute")
    } else {
        ("minutes", "minutes")
    };
    (
        format!("{} {en_u}", en_number(m)),
        format!("{} {fr_u}", fr_number(m, true)),
    )
}

/// Upper-cases the first character (`à` -> `À`, `l'` -> `L'`).
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn noun(list: &'static [Noun], key: &str) -> &'static Noun {
    list.iter()
        .find(|x| x.key == key)
        .unwrap_or_else(|| panic!("grammar table has no noun {key}"))
}

fn city_key(en: &str) -> String {
    en.to_lowercase()
}

/// Collects pairs template by template.
struct Out(Vec<Pair>);

impl Out {
    fn push(
        &mut self,
        template: &'static str,
        slots: &[(&'static str, String)],
        en: String,
        fr: String,
    ) {
        self.0.push(Pair {
            template,
            slots: slots.to_vec(),
            en,
            fr,
        });
    }
}

/// Every pair the grammar can produce, in a fixed order.
pub fn all_pairs() -> Vec<Pair> {
    let mut o = Out(Vec::new());
    for (en, fr) in PHRASES {
        o.push("phrase", &[], en.to_string(), fr.to_string());
    }
    for p in PLACES {
        let s = [("place", p.key.to_string())];
        o.push(
            "where_is",
            &s,
            format!("Where {} the {}?", p.is(), p.en),
            format!("Où {} {} ?", p.est(), p.le()),
        );
        o.push(
            "how_get",
            &s,
            format!("How do I get to the {}?", p.en),
            format!("Comment aller {} ?", p.au()),
        );
        o.push(
            "nearest",
            &s,
            format!("Where {} the nearest {}?", p.is(), p.en),
            format!(
                "Où {} {} {} {} ?",
                p.est(),
                p.le(),
                p.adj_article(),
                if p.pl { "plus proches" } else { "plus proche" }
            ),
        );
        o.push(
            "help_find",
            &s,
            format!("Can you help me find the {}?", p.en),
            format!("Pouvez-vous m'aider à trouver {} ?", p.le()),
        );
        for (gk, gen, gfr) in GREETINGS {
            o.push(
                "greeting_where",
                &[("greeting", gk.to_string()), ("place", p.key.to_string())],
                format!("{gen}, where {} the {}?", p.is(), p.en),
                format!("{gfr}, où {} {} ?", p.est(), p.le()),
            );
        }
        for (dk, den, dfr) in DIRECTIONS {
            o.push(
                "direction",
                &[("place", p.key.to_string()), ("direction", dk.to_string())],
                format!("The {} {} {den}.", p.en, p.is()),
                format!("{} {} {dfr}.", capitalize(&p.le()), p.est()),
            );
        }
        for m in WALK_MINUTES {
            let (men, mfr) = minutes_words(m);
            o.push(
                "walk",
                &[("place", p.key.to_string()), ("minutes", m.to_string())],
                format!("The {} {} {men} away on foot.", p.en, p.is()),
                format!("{} {} à {mfr} à pied.", capitalize(&p.le()), p.est()),
            );
        }
        for (rk, ren, rfr, de) in RELATIONS {
            for q in PLACES {
                if q.key == p.key {
                    continue;
                }
                let other = if *de {
                    format!("{rfr} {}", q.du())
                } else {
                    format!("{rfr} {}", q.le())
                };
                o.push(
                    "relative_position",
                    &[
                        ("place", p.key.to_string()),
                        ("relation", rk.to_string()),
                        ("other_place", q.key.to_string()),
                    ],
                    format!("The {} {} {ren} the {}.", p.en, p.is(), q.en),
                    format!("{} {} {other}.", capitalize(&p.le()), p.est()),
                );
            }
        }
    }
    for key in OPENING_PLACES {
        let p = noun(PLACES, key);
        let (open_en, open_fr, close_en, close_fr) = if p.pl {
            ("open", "ouvrent", "close", "ferment")
        } else {
            ("opens", "ouvre", "closes", "ferme")
        };
        for h in 7..=11 {
            for m in [0, 30] {
                let (ten, tfr) = time_words(h, m);
                o.push(
                    "opens_at",
                    &[
                        ("place", p.key.to_string()),
                        ("time", format!("{h:02}:{m:02}")),
                    ],
                    format!("The {} {open_en} at {ten}.", p.en),
                    format!("{} {open_fr} à {tfr}.", capitalize(&p.le())),
                );
            }
        }
        for h in 17..=22 {
            for m in [0, 30] {
                let (ten, tfr) = time_words(h, m);
                o.push(
                    "closes_at",
                    &[
                        ("place", p.key.to_string()),
                        ("time", format!("{h:02}:{m:02}")),
                    ],
                    format!("The {} {close_en} at {ten}.", p.en),
                    format!("{} {close_fr} à {tfr}.", capitalize(&p.le())),
                );
            }
        }
    }
    for it in ITEMS {
        o.push(
            "found_item",
            &[("item", it.key.to_string())],
            format!("Have you found my {}?", it.en),
            format!("Avez-vous trouvé {} ?", it.mon()),
        );
        for p in PLACES {
            let s = [("item", it.key.to_string()), ("place", p.key.to_string())];
            o.push(
                "left_item",
                &s,
                format!("I left my {} at the {}.", it.en, p.en),
                format!("J'ai oublié {} {}.", it.mon(), p.au()),
            );
            o.push(
                "item_is_at",
                &s,
                format!("Your {} {} at the {}.", it.en, it.is(), p.en),
                format!("{} {} {}.", capitalize(&it.votre()), it.est(), p.au()),
            );
        }
    }
    for key in STORABLE {
        let it = noun(ITEMS, key);
        for p in PLACES {
            o.push(
                "leave_item",
                &[("item", it.key.to_string()), ("place", p.key.to_string())],
                format!("Can I leave my {} at the {}?", it.en, p.en),
                format!("Puis-je laisser {} {} ?", it.mon(), p.au()),
            );
        }
    }
    for (cen, cfr) in CITIES {
        let ck = city_key(cen);
        for (tk, ten_sg, ten_pl, tfr_sg, tfr_pl, tfem) in TICKETS {
            let un = if *tfem { "Une" } else { "Un" };
            let un_lc = if *tfem { "une" } else { "un" };
            o.push(
                "ticket_price_question",
                &[("ticket", tk.to_string()), ("city", ck.clone())],
                format!("How much is a {ten_sg} to {cen}?"),
                format!("Combien coûte {un_lc} {tfr_sg} pour {cfr} ?"),
            );
            for count in 1..=10 {
                let (nen, nfr) = (en_number(count), fr_number(count, *tfem));
                let (ten, tfr) = if count == 1 {
                    (ten_sg, tfr_sg)
                } else {
                    (ten_pl, tfr_pl)
                };
                o.push(
                    "buy_tickets",
                    &[
                        ("count", count.to_string()),
                        ("ticket", tk.to_string()),
                        ("city", ck.clone()),
                    ],
                    format!("I would like {nen} {ten} to {cen}, please."),
                    format!("Je voudrais {nfr} {tfr} pour {cfr}, s'il vous plaît."),
                );
            }
            for (e, c) in PRICES {
                let (pen, pfr) = price_words(*e, *c);
                o.push(
                    "ticket_price",
                    &[
                        ("ticket", tk.to_string()),
                        ("city", ck.clone()),
                        ("price", format!("{e}.{c:02}")),
                    ],
                    format!("A {ten_sg} to {cen} costs {pen}."),
                    format!("{un} {tfr_sg} pour {cfr} coûte {pfr}."),
                );
            }
        }
        for v in VEHICLES {
            let vs = |extra: &[(&'static str, String)]| {
                let mut s = vec![("vehicle", v.key.to_string()), ("city", ck.clone())];
                s.extend_from_slice(extra);
                s
            };
            let le_v = capitalize(&v.le());
            o.push(
                "cancelled",
                &vs(&[]),
                format!("The {} to {cen} is cancelled.", v.en),
                format!("{le_v} pour {cfr} est {}.", v.agree("annulé")),
            );
            o.push(
                "which_platform",
                &vs(&[]),
                format!("Which platform does the {} to {cen} leave from?", v.en),
                format!("De quel quai part {} pour {cfr} ?", v.le()),
            );
            o.push(
                "is_this",
                &vs(&[]),
                format!("Is this the {} to {cen}?", v.en),
                format!("Est-ce bien {} pour {cfr} ?", v.le()),
            );
            for m in DELAY_MINUTES {
                let (men, mfr) = minutes_words(*m);
                o.push(
                    "delayed",
                    &vs(&[("minutes", m.to_string())]),
                    format!("The {} to {cen} is delayed by {men}.", v.en),
                    format!("{le_v} pour {cfr} a un retard de {mfr}."),
                );
            }
            for platform in 1..=20u32 {
                o.push(
                    "platform",
                    &vs(&[("platform", platform.to_string())]),
                    format!("The {} to {cen} leaves from platform {platform}.", v.en),
                    format!("{le_v} pour {cfr} part du quai {platform}."),
                );
            }
            let prochain = if v.fem { "La prochaine" } else { "Le prochain" };
            for h in DEPARTURE_HOURS {
                for m in DEPARTURE_MINUTES {
                    let (ten, tfr) = time_words(*h, *m);
                    o.push(
                        "next_departure",
                        &vs(&[("time", format!("{h:02}:{m:02}"))]),
                        format!("The next {} to {cen} leaves at {ten}.", v.en),
                        format!("{prochain} {} pour {cfr} part à {tfr}.", v.fr),
                    );
                }
            }
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_numbers_follow_the_traditional_spelling() {
        let cases = [
            (0, false, "zéro"),
            (1, true, "une"),
            (17, false, "dix-sept"),
            (21, false, "vingt et un"),
            (21, true, "vingt et une"),
            (32, false, "trente-deux"),
            (70, false, "soixante-dix"),
            (71, false, "soixante et onze"),
            (77, false, "soixante-dix-sept"),
            (80, false, "quatre-vingts"),
            (81, true, "quatre-vingt-une"),
            (91, false, "quatre-vingt-onze"),
            (99, false, "quatre-vingt-dix-neuf"),
        ];
        for (n, fem, want) in cases {
            assert_eq!(fr_number(n, fem), want, "{n} fem={fem}");
        }
        assert_eq!(en_number(45), "forty-five");
        assert_eq!(en_number(13), "thirteen");
    }

    #[test]
    fn times_and_prices() {
        assert_eq!(
            time_words(21, 15),
            (
                "twenty-one fifteen".into(),
                "vingt et une heures quinze".into()
            )
        );
        assert_eq!(time_words(1, 0), ("one o'clock".into(), "une heure".into()));
        assert_eq!(
            time_words(17, 0),
            ("seventeen hundred".into(), "dix-sept heures".into())
        );
        assert_eq!(
            time_words(9, 5),
            ("nine oh five".into(), "neuf heures cinq".into())
        );
        assert_eq!(price_words(1, 0), ("one euro".into(), "un euro".into()));
        assert_eq!(
            price_words(71, 50),
            (
                "seventy-one euros fifty".into(),
                "soixante et onze euros cinquante".into()
            )
        );
    }

    #[test]
    fn capitalize_handles_accents_and_elision() {
        assert_eq!(capitalize("à la gare"), "À la gare");
        assert_eq!(capitalize("l'hôtel"), "L'hôtel");
    }
}
