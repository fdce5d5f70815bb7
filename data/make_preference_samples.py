"""Writes preference_train.jsonl and preference_eval.jsonl: pairs for DPO and reward models (tunekit/preference.py).

The preference is one a scorer can check exactly: the chosen answer starts with "In short: " and is one plain
sentence; the rejected one gives the same fact wrapped in filler ("Great question! ... I hope this helps!").
Standard library only, no randomness: `python data/make_preference_samples.py` rewrites both files byte for byte.
Train records rotate through the three accepted shapes (a string prompt; a message-list prompt, some with a system
turn; ShareGPT 'conversations' with {"from": "gpt", "value": ...} answers); the held-out split uses message lists
and shares no question with training; its questions are ones the base SmolLM2-135M-Instruct answers right, each
with a "check" (the fact's words) for recipes/chat/win_rate.py."""
import json
from pathlib import Path

QA = [  # (question, the fact as one sentence[, held-out: its check])
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("What language is spoken in Brazil?", "Portuguese is the main language of Brazil."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Which ocean is the largest?", "The Pacific is the largest ocean."),
    ("How many minutes are in an hour?", "An hour has sixty minutes."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What do bees make?", "Bees make honey and wax."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain on Earth."),
    ("What organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is 12 times 12?", "Twelve times twelve is 144."),
    ("Which animal is the largest mammal?", "The blue whale is the largest mammal."),
    ("What is the main ingredient of guacamole?", "Guacamole is made mainly from avocado."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What force keeps us on the ground?", "Gravity keeps us on the ground."),
    ("How many hours are in a day?", "A day has twenty-four hours."),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("Which metal is liquid at room temperature?", "Mercury is liquid at room temperature."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("How many players are on a soccer team on the field?", "A soccer team has eleven players on the field."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Which instrument has black and white keys?", "The piano has black and white keys."),
    ("What is H2O commonly called?", "H2O is commonly called water."),
    ("How many weeks are in a year?", "A year has fifty-two weeks."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("Which bird is a symbol of peace?", "The dove is a symbol of peace."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many bones are in the adult human body?", "The adult human body has 206 bones."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("What is the currency of the United Kingdom?", "The United Kingdom uses the pound sterling."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    # held-out from here: questions the base SmolLM2-135M-Instruct answers right (greedy), so that a scorer can ask
    # for the style and the fact; each with its check, the fact's words (case-insensitive, whole words, | between)
    ("What is the capital of Germany?", "The capital of Germany is Berlin.", "Berlin"),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity.", "Einstein"),
    ("How many seconds are in a minute?", "A minute has sixty seconds.", "sixty|60"),
    ("What is the capital of Russia?", "The capital of Russia is Moscow.", "Moscow"),
    ("What is the capital of Australia?", "The capital of Australia is Canberra.", "Canberra"),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day.", "blue"),
    ("How many days are in a week?", "A week has seven days.", "seven|7"),
    ("What is 2 plus 2?", "Two plus two is 4.", "four|4"),
    ("What language is spoken in France?", "French is spoken in France.", "French"),
    ("How many legs does a dog have?", "A dog has four legs.", "four|4"),
    ("Who invented the telephone?", "Alexander Graham Bell invented the telephone.", "Bell"),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin.", "Fleming"),
    ("What is the center of an atom called?", "The center of an atom is called the nucleus.", "nucleus"),
    ("What process do plants use to make food from sunlight?", "Plants make food from sunlight by photosynthesis.",
     "photosynthesis"),
    ("In which country are the pyramids of Giza?", "The pyramids of Giza are in Egypt.", "Egypt"),
    ("What is the capital of Greece?", "The capital of Greece is Athens.", "Athens"),
]
TRAIN = 48
OPENERS = ["Great question! ", "Oh, what a wonderful thing to ask! ", "Thanks so much for asking! ",
           "What an interesting question! "]
CLOSERS = [" I hope this helps!", " Let me know if you have any other questions!", " I hope that answers it!",
           " Feel free to ask me anything else!"]
SYSTEMS = ["You are a helpful assistant.", "Answer the user's question."]


def pair(i: int) -> tuple[str, str]:
    fact = QA[i][1]
    return f"In short: {fact}", f"{OPENERS[i % 4]}{fact}{CLOSERS[(i // 4) % 4]}"


def train_record(i: int) -> dict:
    question, (chosen, rejected) = QA[i][0], pair(i)
    if i % 3 == 0:
        return {"prompt": question, "chosen": chosen, "rejected": rejected}
    if i % 3 == 1:
        prompt = ([{"role": "system", "content": SYSTEMS[i % 2]}] if i % 6 == 1 else []) + [
            {"role": "user", "content": question}]
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    return {"conversations": [{"from": "human", "value": question}], "chosen": {"from": "gpt", "value": chosen},
            "rejected": {"from": "gpt", "value": rejected}}


def eval_record(i: int) -> dict:
    chosen, rejected = pair(i)
    return {"prompt": [{"role": "user", "content": QA[i][0]}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "check": QA[i][2]}


def write(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


if __name__ == "__main__":
    here = Path(__file__).parent
    write(here / "preference_train.jsonl", [train_record(i) for i in range(TRAIN)])
    write(here / "preference_eval.jsonl", [eval_record(i) for i in range(TRAIN, len(QA))])
