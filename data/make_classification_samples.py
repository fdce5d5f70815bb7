"""Regenerate the classification samples in data/ (sentiment and NER), written for this repository.

    python data/make_classification_samples.py

Writes sentiment_train.jsonl / sentiment_eval.jsonl ({"text", "label"}) and ner_train.jsonl / ner_eval.jsonl
({"tokens", "tags"}, BIO with PER/LOC/ORG). Everything is built from the hand-written sentences, templates and word
lists below with a fixed seed, so running it again gives byte-identical files. Standard library only.
"""

import json
import random
import re
from pathlib import Path

SEED = 20240611
HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------------------------
# Sentiment
# --------------------------------------------------------------------------------------------------------------

# Aspect groups per domain: (phrase, bare noun for "really <adj> <noun>" or None, plural), positive and negative
# adjectives that fit every phrase of the group.
ASPECTS = {
    "restaurant": [
        {"nouns": [("the soup", "soup", False), ("the pasta", "pasta", False), ("the tacos", "tacos", True),
                   ("the dumplings", "dumplings", True), ("the curry", "curry", False),
                   ("the grilled fish", "fish", False), ("the noodles", "noodles", True),
                   ("the burger", None, False), ("the risotto", "risotto", False), ("the pizza", "pizza", False)],
         "pos": ["delicious", "full of flavor", "perfectly seasoned", "fresh", "cooked just right", "wonderful",
                 "tasty", "rich and satisfying"],
         "neg": ["bland", "greasy", "overcooked", "soggy", "lukewarm", "oddly sour", "tasteless", "far too salty"]},
        {"nouns": [("the service", "service", False), ("the staff", "staff", True),
                   ("the waiters", "waiters", True), ("the bartenders", "bartenders", True)],
         "pos": ["friendly", "attentive", "quick", "warm and welcoming", "helpful", "genuinely kind"],
         "neg": ["rude", "slow", "dismissive", "careless", "inattentive", "unfriendly"]},
        {"nouns": [("the atmosphere", "atmosphere", False), ("the dining room", None, False),
                   ("the patio", "patio", False), ("the terrace", "terrace", False)],
         "pos": ["cozy", "relaxing", "charming", "lovely", "bright and inviting"],
         "neg": ["noisy", "cramped", "dingy", "gloomy", "stuffy", "dirty"]},
        {"nouns": [("the portions", "portions", True)],
         "pos": ["generous", "huge", "hearty", "more than enough"],
         "neg": ["tiny", "stingy", "meager", "laughably small"]},
        {"nouns": [("the desserts", "desserts", True), ("the coffee", "coffee", False), ("the bread", "bread", False),
                   ("the cocktails", "cocktails", True)],
         "pos": ["excellent", "superb", "delightful", "outstanding", "heavenly"],
         "neg": ["disappointing", "mediocre", "awful", "forgettable", "overpriced"]},
    ],
    "movie": [
        {"nouns": [("the plot", "plot", False), ("the story", "story", False), ("the script", "script", False),
                   ("the ending", "ending", False), ("the twist", "twist", False)],
         "pos": ["gripping", "clever", "moving", "surprising", "brilliant", "original", "beautifully written"],
         "neg": ["predictable", "confusing", "dull", "rushed", "ridiculous", "lazy", "painfully thin"]},
        {"nouns": [("the acting", "acting", False), ("the cast", "cast", False),
                   ("the performances", "performances", True), ("the supporting actors", None, True),
                   ("the lead performance", None, False)],
         "pos": ["superb", "convincing", "heartfelt", "magnetic", "outstanding", "wonderful"],
         "neg": ["wooden", "flat", "unconvincing", "forgettable", "stiff", "terrible"]},
        {"nouns": [("the cinematography", "cinematography", False), ("the special effects", "effects", True),
                   ("the visuals", "visuals", True), ("the costumes", "costumes", True)],
         "pos": ["stunning", "gorgeous", "breathtaking", "beautiful", "inventive", "striking"],
         "neg": ["cheap", "murky", "distracting", "ugly", "dated", "sloppy"]},
        {"nouns": [("the soundtrack", "soundtrack", False), ("the score", "score", False),
                   ("the songs", "songs", True)],
         "pos": ["memorable", "haunting", "gorgeous", "stirring", "perfect"],
         "neg": ["grating", "forgettable", "overbearing", "generic", "jarring"]},
        {"nouns": [("the dialogue", "dialogue", False), ("the humor", "humor", False), ("the jokes", "jokes", True)],
         "pos": ["sharp", "witty", "clever", "delightful", "hilarious"],
         "neg": ["clunky", "cringeworthy", "annoying", "awkward", "stale"]},
        {"nouns": [("the pacing", "pacing", False), ("the second half", None, False),
                   ("the middle act", None, False)],
         "pos": ["tight", "brisk", "well judged", "just right", "excellent"],
         "neg": ["sluggish", "painfully slow", "exhausting", "bloated", "tedious"]},
    ],
    # Products come in three kinds, so that an item and its parts fit together ("this headset" ... "the bass").
    "kitchen": [
        {"nouns": [("the build quality", None, False), ("the lid", "lid", False), ("the handle", "handle", False),
                   ("the buttons", "buttons", True), ("the materials", "materials", True)],
         "pos": ["sturdy", "solid", "well made", "durable", "excellent", "reassuringly tough"],
         "neg": ["flimsy", "cheap", "fragile", "poorly made", "shoddy", "cheap-feeling"]},
        {"nouns": [("the motor", "motor", False), ("the fan", "fan", False), ("the heating", None, False)],
         "pos": ["powerful", "quiet", "reliable", "fast", "remarkably good"],
         "neg": ["noisy", "sluggish", "unreliable", "weak", "painfully slow"]},
        {"nouns": [("the setup", "setup", False), ("the controls", "controls", True),
                   ("the instructions", "instructions", True), ("the display", "display", False)],
         "pos": ["intuitive", "simple", "straightforward", "clear", "easy to follow", "user-friendly"],
         "neg": ["confusing", "clunky", "frustrating", "baffling", "awkward", "hard to make sense of"]},
    ],
    "audio": [
        {"nouns": [("the sound", "sound", False), ("the bass", "bass", False), ("the audio quality", None, False),
                   ("the microphone", "microphone", False)],
         "pos": ["crisp", "rich", "clear", "excellent", "impressive", "warm and detailed"],
         "neg": ["tinny", "muddy", "distorted", "harsh", "disappointing", "thin and lifeless"]},
        {"nouns": [("the battery", "battery", False), ("the battery life", None, False),
                   ("the charging speed", None, False)],
         "pos": ["impressive", "excellent", "fantastic", "better than advertised", "great"],
         "neg": ["disappointing", "weak", "pathetic", "much worse than advertised", "awful"]},
        {"nouns": [("the app", "app", False), ("the setup", "setup", False), ("the controls", "controls", True),
                   ("the pairing process", None, False)],
         "pos": ["intuitive", "simple", "straightforward", "painless", "user-friendly"],
         "neg": ["confusing", "clunky", "frustrating", "buggy", "maddening"]},
        {"nouns": [("the build quality", None, False), ("the casing", "casing", False),
                   ("the buttons", "buttons", True), ("the charging case", None, False)],
         "pos": ["sturdy", "solid", "well made", "durable", "premium"],
         "neg": ["flimsy", "cheap", "fragile", "poorly made", "rattly"]},
    ],
    "wear": [
        {"nouns": [("the stitching", "stitching", False), ("the zipper", "zipper", False),
                   ("the fabric", "fabric", False), ("the seams", "seams", True), ("the materials", "materials", True)],
         "pos": ["sturdy", "solid", "well made", "durable", "excellent", "high quality"],
         "neg": ["flimsy", "cheap", "fragile", "poorly made", "shoddy", "already fraying"]},
        {"nouns": [("the fit", "fit", False), ("the padding", "padding", False),
                   ("the cushioning", "cushioning", False)],
         "pos": ["comfortable", "supportive", "just right", "excellent", "wonderful"],
         "neg": ["uncomfortable", "stiff", "awkward", "all wrong", "terrible"]},
        {"nouns": [("the color", "color", False), ("the design", "design", False), ("the style", "style", False)],
         "pos": ["gorgeous", "elegant", "stylish", "lovely", "beautiful"],
         "neg": ["dull", "ugly", "tacky", "drab", "boring"]},
    ],
}

DOMAIN = {
    "restaurant": {
        "items": ["this place", "the restaurant", "this little bistro", "the new diner downtown", "this cafe",
                  "the hotel restaurant", "this family-run spot", "the brasserie near the station"],
        "pverdict": ["we will definitely be back", "I left full and happy", "it was worth every penny",
                     "it is our new favorite spot", "I already booked another table",
                     "I would recommend it to anyone"],
        "nverdict": ["we will not be going back", "I left hungry and annoyed", "it was a waste of money",
                     "I regret choosing it for my birthday", "I would not recommend it to anyone",
                     "we paid far too much for it"],
        "minor_neg": ["the long wait for a table", "a slightly noisy room", "the tiny parking lot",
                      "a short wait for the bill"],
        "minor_pos": ["the host was polite", "the menu looked great", "the view was nice", "the bread was warm"],
        "nevent": ["we waited forty minutes for cold food", "the waiter forgot our order twice",
                   "they ran out of half the menu", "the kitchen sent out the wrong dishes"],
        "pevent": ["the chef sent out a free dessert", "every plate came out hot and beautiful",
                   "the staff made us feel like regulars", "the food arrived quickly and tasted amazing"],
    },
    "movie": {
        "items": ["this movie", "the film", "the sequel", "this thriller", "the new comedy", "this drama",
                  "the remake", "this sci-fi epic"],
        "pverdict": ["I would watch it again tomorrow", "it stayed with me for days",
                     "the whole theater applauded at the end", "it easily earns five stars",
                     "it is the best film I have seen this year", "I recommend it to everyone"],
        "nverdict": ["I nearly walked out halfway", "I kept checking my watch",
                     "it was two hours I will never get back", "I fell asleep before the ending",
                     "I cannot recommend it", "I regret buying a ticket"],
        "minor_neg": ["a slow first ten minutes", "one silly subplot", "a few corny lines",
                      "the uncomfortable theater seats"],
        "minor_pos": ["the poster looked great", "the lead tried hard", "the opening scene was fun",
                      "the trailer was exciting"],
        "nevent": ["the story fell apart in the last act", "the jokes ran out after twenty minutes",
                   "it turned into a loud, empty mess", "every twist was obvious from a mile away"],
        "pevent": ["it kept me on the edge of my seat", "the final act completely won me over",
                   "it made me laugh and cry within an hour", "every scene seemed to top the last"],
    },
}
PRODUCT = {  # shared by the three kinds of product; each kind adds its items, breakdowns and happy moments
    "pverdict": ["I would buy it again without hesitation", "it was worth every penny",
                 "I already ordered one for my sister", "it gets five stars from me", "I recommend it to everyone"],
    "nverdict": ["I am returning it tomorrow", "it was a complete waste of money", "I regret buying it",
                 "I would not recommend it", "I want my money back", "it went straight back in the box"],
    "minor_neg": ["the bland packaging", "the slow delivery", "a slightly bulky design", "the odd color choice"],
    "minor_pos": ["the box looked nice", "delivery was quick", "the price was low", "the photos looked great"],
    "pevent": ["it arrived early and looked even better than the photos", "it outperformed my old one easily"],
}
for kind, extra in {
    "kitchen": {"items": ["this blender", "the coffee maker", "this air fryer", "the electric kettle",
                          "this toaster oven"],
                "pverdict": ["it has made my mornings so much easier"],
                "nevent": ["it stopped working after three days", "the handle snapped on the second use",
                           "it started making a grinding noise", "the power button gave out within a week"],
                "pevent": ["it has worked flawlessly every single day", "it handled everything I threw at it",
                           "it worked straight out of the box"]},
    "audio": {"items": ["this headset", "this pair of earbuds", "this speaker", "the soundbar",
                        "this portable radio"],
              "pverdict": ["my commute is so much nicer now"],
              "nevent": ["the left side went silent after a week", "it kept dropping the connection",
                         "it stopped charging after a month", "a loud buzz appeared on day two"],
              "pevent": ["it fills the whole room with sound", "it lasts all week on a single charge"]},
    "wear": {"items": ["this backpack", "this pair of running shoes", "the winter jacket", "this raincoat",
                       "this pair of hiking boots"],
             "pverdict": ["I wear it almost every day"],
             "nevent": ["a strap came loose within a week", "the sole started peeling after a month",
                        "a seam ripped on the very first trip", "the color faded after one wash"],
             "pevent": ["it still looks brand new after months of use", "it kept me dry through a week of rain",
                        "it felt comfortable from the very first day"]},
}.items():
    DOMAIN[kind] = {k: extra.get(k, []) + PRODUCT.get(k, []) for k in ("items", *PRODUCT, "nevent")}
# restaurant : movie : product = 1 : 1 : 1
DOMAIN_WEIGHTS = {"restaurant": 3, "movie": 3, "kitchen": 1, "audio": 1, "wear": 1}

PEOPLE = {"the staff", "the waiters", "the bartenders", "the cast", "the supporting actors"}  # "who", not "which"
GPOS = ["fantastic", "a real delight", "excellent", "wonderful", "a joy", "a pleasant surprise", "superb"]
GNEG = ["a letdown", "disappointing", "awful", "a mess", "mediocre at best", "a big disappointment", "terrible"]

# Templates; (a|b|c) picks one alternative. {asp}/{asp2} are aspects of two different groups of one domain.
TEMPLATES = {
    "positive": [
        "{Asp} {be} {pos}, and {pverdict}.",
        "{Item} (surprised me|won me over|impressed me): {asp} {be} {pos} and {asp2} {be2} {pos2}.",
        "I was (worried|nervous|doubtful) about {asp}, but {itbe} {pos} after all.",
        "{Asp} {be} not {neg1} at all; (in fact|honestly|if anything) {itbe} {pos}.",
        "{Asp} {be} {pos}; (honestly|all in all|overall), {pverdict}.",
        "Apart from {minor_neg}, {item} was {gpos} and {pverdict}.",
        "(Really|Truly|Genuinely) {pos1} {bare}; {pverdict}.",
        "I did not expect much from {item}, but {pevent}.",
        "{Item} was {gpos}: {pevent}.",
        "(I loved|We loved|I adored) {item}, especially {asp}, {which} {be} {pos}.",
        "(Five stars|Two thumbs up|Highly recommended): {asp} {be} {pos} and {pevent}.",
        "I (cannot|can't) fault {item}; even {asp} {be} {pos}.",
    ],
    "negative": [
        "{Asp} {be} {neg}, and {nverdict}.",
        "I wanted to (love|like|enjoy) {item}, but {asp} {be} {neg}.",
        "{Asp} {be} far from {pos1}; {itbe} {neg}, (frankly|to be honest|sadly).",
        "{Item} looked promising at first, but {nevent}.",
        "Even though {minor_pos}, {item} was {gneg} and {nverdict}.",
        "(Sadly|Unfortunately|Honestly), {asp} {be} {neg} and {asp2} {be2} {neg2}.",
        "(Really|Truly|Incredibly) {neg1} {bare}; {nverdict}.",
        "I expected a lot from {item}, yet {asp} {be} {neg}.",
        "{Item} was {gneg}: {nevent}.",
        "(Avoid|Skip) {item}; {asp} {be} {neg} and {nverdict}.",
        "(One star|Never again|What a shame): {asp} {be} {neg} and {nevent}.",
        "Nothing about {item} worked for me; even {asp} {be} {neg}.",
    ],
}

# Hand-written sentences: sentiment carried by what happened rather than by one adjective, plus some negations.
HANDWRITTEN = {
    "positive": [
        "My kids asked to watch it again the moment the credits rolled.",
        "The battery easily lasts two full days, even with heavy use.",
        "We ordered a second round of dumplings because the first plate vanished so fast.",
        "Setup took five minutes and it has worked flawlessly ever since.",
        "The waiter remembered our names from last month, which was a lovely touch.",
        "I laughed out loud more times than I can count.",
        "It folds flat, fits in my bag, and still feels solid.",
        "Every dish arrived hot, beautifully plated, and full of flavor.",
        "The final scene gave me goosebumps.",
        "This kettle boils water in about a minute and looks great on the counter.",
        "No complaints at all; it does exactly what the description promised.",
        "The chef came out to chat with us and the tiramisu was heavenly.",
        "A clever, warm-hearted story with a cast that clearly loved their roles.",
        "I have dropped this phone case several times and the phone is still spotless.",
        "Cozy booths, friendly staff, and the best pancakes in town.",
        "Two hours flew by and I did not check my phone once.",
        "The sound quality blew me away for such a low price.",
        "Our table was ready on time and the wine recommendation was spot on.",
        "Worth the hype; the animation alone is a feast for the eyes.",
        "After a month of daily use, these sneakers still feel like walking on clouds.",
        "Support replaced the faulty part within two days, no questions asked.",
        "I went in skeptical and came out grinning.",
        "The portions were huge, so we took half home for lunch the next day.",
        "It is quiet enough that I can run it while the baby sleeps.",
        "Easily the most charming little cafe I have found this year.",
        "The actors had wonderful chemistry and the dialogue felt natural.",
        "This vacuum picks up the dog hair that my old one always left behind.",
        "Fresh ingredients, fair prices, and a view of the harbor.",
        "I would not change a single thing about this film.",
        "Not a single crumb was left on our plates.",
        "I can't stop recommending this blender to my friends.",
        "The documentary taught me a lot without ever feeling like a lecture.",
    ],
    "negative": [
        "The battery died before lunch on the very first day.",
        "We waited almost an hour and our order still came out wrong.",
        "I kept waiting for the story to start, and it never did.",
        "The stitching came apart after the second wash.",
        "Our server vanished for twenty minutes at a time.",
        "The jokes landed with a thud and the audience sat in silence.",
        "It arrived scratched, and the replacement was scratched too.",
        "The soup tasted like it had been reheated several times.",
        "I guessed the twist within the first ten minutes.",
        "The app crashes every time I try to pair the speaker.",
        "The menu promised a lot, but the kitchen delivered very little.",
        "Halfway through, half the theater was looking at their phones.",
        "The handle feels loose and wobbles whenever I pour.",
        "They charged us for drinks we never ordered.",
        "The lead actor mumbled through every single line.",
        "After three weeks the screen started flickering.",
        "The table was sticky and the music was so loud we had to shout.",
        "It looks nothing like the pictures and smells of cheap plastic.",
        "Too long, too loud, and strangely empty.",
        "The steak came out gray and chewy, and nobody apologized.",
        "Customer service kept me on hold for an hour, then hung up.",
        "The sequel repeats the first film's jokes without any of its charm.",
        "These earbuds fall out whenever I turn my head.",
        "I have never been so glad to see the end credits.",
        "The room smelled of old frying oil and the fries were limp.",
        "It stopped holding a charge after a month.",
        "The pacing was so slow that I dozed off twice.",
        "For that price I expected far better than frozen vegetables.",
        "Not one of the characters felt like a real person.",
        "Nothing about this coffee maker works the way it should.",
        "The instructions were missing and two screws were not in the box.",
        "I would not wish this movie on my worst enemy.",
    ],
}

SENT_TRAIN_PER_CLASS, SENT_EVAL_PER_CLASS = 120, 40
HANDWRITTEN_EVAL_PER_CLASS = 8


def expand(template, rng):
    """Replace every (a|b|c) group by one of its alternatives."""
    return re.sub(r"\(([^()]*\|[^()]*)\)", lambda m: rng.choice(m.group(1).split("|")), template)


def cap(s):
    return s[0].upper() + s[1:]


def fill(template, label, rng):
    domain = rng.choice([k for k, w in DOMAIN_WEIGHTS.items() for _ in range(w)])
    d = DOMAIN[domain]
    g1, g2 = rng.sample(ASPECTS[domain], 2)
    needs_bare = "{bare}" in template
    nouns = [n for n in g1["nouns"] if n[1]] if needs_bare else g1["nouns"]
    asp, bare, plural = rng.choice(nouns)
    asp2, _, plural2 = rng.choice(g2["nouns"])
    pos, neg = rng.choice(g1["pos"]), rng.choice(g1["neg"])
    one_word = lambda words: [w for w in words if " " not in w]  # fit "really {pos1} {bare}", "not {neg1} at all"
    item = rng.choice(d["items"])
    values = {
        "asp": asp, "Asp": cap(asp), "be": "were" if plural else "was", "itbe": "they were" if plural else "it was",
        "which": "who" if asp in PEOPLE else "which", "asp2": asp2, "be2": "were" if plural2 else "was",
        "pos": pos, "neg": neg, "pos2": rng.choice(g2["pos"]), "neg2": rng.choice(g2["neg"]),
        "pos1": rng.choice(one_word(g1["pos"])), "neg1": rng.choice(one_word(g1["neg"])),
        "bare": bare or "", "item": item, "Item": cap(item),
        "gpos": rng.choice(GPOS), "gneg": rng.choice(GNEG),
        **{k: rng.choice(d[k]) for k in ("pverdict", "nverdict", "minor_neg", "minor_pos", "nevent", "pevent")},
    }
    return cap(expand(template, rng).format(**values))


def words(text):
    return re.findall(r"[a-z']+", text.lower())


def too_close(text, chosen, threshold=0.75):
    """True when text shares almost all of its words with an already chosen sentence (one-word variants)."""
    w = set(words(text))
    return any(len(w & c) / len(w | c) >= threshold for c in chosen)


def make_sentiment(rng):
    train, evals, chosen = [], [], []
    for label in ("positive", "negative"):
        hand = list(HANDWRITTEN[label])
        rng.shuffle(hand)
        n_total = SENT_TRAIN_PER_CLASS + SENT_EVAL_PER_CLASS
        texts = []
        for t in hand:
            assert 5 <= len(words(t)) <= 25, t
            texts.append(t)
            chosen.append(set(words(t)))
        hand_eval, hand_train = texts[:HANDWRITTEN_EVAL_PER_CLASS], texts[HANDWRITTEN_EVAL_PER_CLASS:]
        generated, templates, attempts = [], TEMPLATES[label], 0
        while len(generated) < n_total - len(hand):
            attempts += 1
            assert attempts < 100000, "word lists too small for the requested counts"
            template = templates[len(generated) % len(templates)]  # every template equally often
            text = fill(template, label, rng)
            if not 5 <= len(words(text)) <= 25 or too_close(text, chosen):
                continue
            generated.append(text)
            chosen.append(set(words(text)))
        n_gen_eval = SENT_EVAL_PER_CLASS - HANDWRITTEN_EVAL_PER_CLASS
        gen = list(generated)
        rng.shuffle(gen)
        evals += [{"text": t, "label": label} for t in hand_eval + gen[:n_gen_eval]]
        train += [{"text": t, "label": label} for t in hand_train + gen[n_gen_eval:]]
    rng.shuffle(train)
    rng.shuffle(evals)
    return train, evals


# --------------------------------------------------------------------------------------------------------------
# NER
# --------------------------------------------------------------------------------------------------------------

FIRST = {"train": ["Alice", "James", "Maria", "Wei", "Fatima", "Carlos", "Priya", "Tom", "Hannah", "Kenji", "Olga",
                   "David", "Amara", "Lucas", "Sofia", "Ahmed", "Emma", "Raj", "Grace", "Mateo", "Yuki", "Noah",
                   "Leila", "Peter", "Chloe", "Ivan", "Nadia", "Samuel"],
         "eval": ["Beatrice", "Oskar", "Ingrid", "Tariq", "Mireille", "Dmitri", "Zanele", "Hiroshi", "Catalina",
                  "Ewan", "Anneliese", "Kwame"]}
LAST = {"train": ["Smith", "Garcia", "Chen", "Khan", "Novak", "Okafor", "Johnson", "Rossi", "Tanaka", "Silva",
                  "Patel", "Brown", "Kowalski", "Dubois", "Nguyen", "Andersson", "Murphy", "Lopez", "Haddad",
                  "Fischer"],
        "eval": ["Lindqvist", "Abernathy", "Castellanos", "Mbeki", "Yamamoto", "Petrov", "O'Sullivan", "Varga",
                 "Achterberg", "Delacroix"]}
LOCS = {"train": ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Cairo", "Toronto", "Sydney", "Mumbai", "Lagos",
                  "Chicago", "Seattle", "Boston", "Vienna", "Lisbon", "Kenya", "Brazil", "Canada", "Japan",
                  "New York", "San Francisco", "Los Angeles", "Hong Kong", "South Africa", "New Zealand",
                  "Cape Town", "Buenos Aires", "Rio de Janeiro", "Mexico City", "Scotland"],
        "eval": ["Reykjavik", "Montevideo", "Ljubljana", "Hanoi", "Nairobi", "Tallinn", "Costa Rica",
                 "Salt Lake City", "Kuala Lumpur", "Sri Lanka", "Santa Fe", "Addis Ababa", "Nova Scotia"]}
ORGS = {"train": ["Acme Corp", "Globex Corporation", "Initech", "Umbrella Pharmaceuticals", "Northwind Traders",
                  "Contoso", "Blue River Bank", "Greenleaf Foods", "Pioneer Airlines", "Siemens", "Toyota", "Oxfam",
                  "Reuters", "Nokia", "Harvard University", "Sunrise Bakery", "Vertex Labs", "Atlas Logistics",
                  "Maple Leaf Insurance", "Orion Systems", "Nimbus Software", "Redwood Studios"],
        "eval": ["Quantum Dynamics Inc", "Silverline Telecom", "Helios Energy", "Bluefin Analytics",
                 "Kestrel Motors", "Pinecrest Hospital", "Halcyon Media", "Zephyr Robotics", "Ironwood Capital",
                 "Lumen Health"]}

# Space-separated tokens; {PER}, {PER2}, {LOC}, {LOC2}, {ORG}, {ORG2} are entity slots.
NER_TEMPLATES = [
    "{PER} flew to {LOC} on Monday .",
    "{PER} works as an engineer at {ORG} .",
    "{ORG} opened a new office in {LOC} last year .",
    "Yesterday , {PER} met {PER2} for lunch in {LOC} .",
    "The mayor of {LOC} praised {ORG} for creating local jobs .",
    "{PER} left {ORG} to start a company in {LOC} .",
    "According to {PER} , {ORG} will hire two hundred people .",
    "{ORG} and {ORG2} signed a partnership agreement in {LOC} .",
    "My cousin {PER} moved from {LOC} to {LOC2} in March .",
    "Shares of {ORG} rose sharply after the announcement .",
    "{PER} spent the summer hiking near {LOC} .",
    "The conference in {LOC} was organised by {ORG} .",
    "{PER} , a spokesperson for {ORG} , declined to comment .",
    "We drove from {LOC} to {LOC2} without stopping .",
    "{PER} thanked {PER2} after the concert in {LOC} .",
    "In {LOC} , {ORG} is the largest employer .",
    "{ORG} appointed {PER} as its new chief executive .",
    "The train to {LOC} was delayed for three hours .",
    "{PER} grew up in {LOC} before studying in {LOC2} .",
    "Last week {ORG} announced record profits .",
    "Did {PER} ever visit {LOC} ?",
    "{PER} 's new book was published by {ORG} .",
    "Tourists flock to {LOC} every spring .",
    "The museum in {LOC} hired {PER} as a curator .",
    "{ORG} recalled thousands of phones sold in {LOC} .",
    "After the match , {PER} told reporters that the team played well .",
    "A delegation from {ORG} arrived in {LOC} on Tuesday .",
    "{PER} and {PER2} founded {ORG} in a small garage .",
    "Heavy rain flooded several streets in {LOC} overnight .",
    "On Friday the board of {ORG} met in {LOC} .",
]
# Used for the eval split only, so it also sees sentence shapes it was not trained on.
NER_EVAL_ONLY_TEMPLATES = [
    "{PER} has volunteered with {ORG} for ten years .",
    "The new bridge connects {LOC} and {LOC2} .",
    "Researchers at {ORG} published a study on sleep .",
    "Thanks to {PER} , the festival in {LOC} sold out .",
    "Why did {ORG} close its factory in {LOC} ?",
    "Ask {PER} about the best cafes in {LOC} .",
]

NER_TRAIN, NER_EVAL = 240, 80
EVAL_UNSEEN_RATE = 0.5  # chance that an eval entity slot takes a name that never appears in training


def person(split, rng):
    first, last = rng.choice(FIRST[split]), rng.choice(LAST[split])
    r = rng.random()
    return [first, last] if r < 0.55 else [first] if r < 0.85 else [last]


def entity(kind, split, rng):
    if kind == "PER":
        return person(split, rng)
    return rng.choice((LOCS if kind == "LOC" else ORGS)[split]).split()


def fill_ner(template, eval_split, rng):
    tokens, tags, used = [], [], []
    for piece in template.split():
        m = re.fullmatch(r"\{(PER|LOC|ORG)2?\}", piece)
        if not m:
            tokens.append(piece)
            tags.append("O")
            continue
        kind = m.group(1)
        while True:  # two slots of one kind get different names
            split = "eval" if eval_split and rng.random() < EVAL_UNSEEN_RATE else "train"
            ent = entity(kind, split, rng)
            if ent not in used:
                break
        used.append(ent)
        tokens += ent
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(ent) - 1)
    return tokens, tags


def make_ner(rng):
    seen, out = set(), {}
    for name, n, templates, eval_split in [("train", NER_TRAIN, NER_TEMPLATES, False),
                                           ("eval", NER_EVAL, NER_TEMPLATES + NER_EVAL_ONLY_TEMPLATES, True)]:
        records = []
        while len(records) < n:
            template = templates[len(records) % len(templates)]
            tokens, tags = fill_ner(template, eval_split, rng)
            key = tuple(tokens)
            if key in seen or not 5 <= len(tokens) <= 20:
                continue
            seen.add(key)
            records.append({"tokens": tokens, "tags": tags})
        rng.shuffle(records)
        out[name] = records
    return out["train"], out["eval"]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(SEED)
    s_train, s_eval = make_sentiment(rng)
    n_train, n_eval = make_ner(rng)
    for name, records in [("sentiment_train.jsonl", s_train), ("sentiment_eval.jsonl", s_eval),
                          ("ner_train.jsonl", n_train), ("ner_eval.jsonl", n_eval)]:
        write_jsonl(HERE / name, records)
        print(f"{name}: {len(records)} records")


if __name__ == "__main__":
    main()
