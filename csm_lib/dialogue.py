"""Text of two-speaker conversations: topics, turn-taking, questions, answers, acknowledgements.

Pure text, no audio: ``make_dialogue(rng)`` returns the turns of one conversation. Sentences
are complete and use everyday words, because the speech recogniser that judges the workbook
(pocketsphinx's general English model) is far more reliable on natural sentences than on
clipped template fragments. Slots are filled at random, so tens of thousands of distinct
sentences are possible (``count_distinct_sentences`` counts them).

A conversation is A opens with a greeting and a question, B answers and adds a detail,
A acknowledges and follows up, B answers and asks back, and so on, ending with a closing line.

Explained in chapter 01 (``notebooks/01_data.ipynb``).
"""

from __future__ import annotations

import itertools
import random
import string

GREETINGS = [
    "Hi there, it is really good to see you again.",
    "Hello, I was hoping I would run into you today.",
    "Good morning, how have you been lately?",
    "Hey, it has been a long time since we last talked.",
    "Hi, do you have a minute to talk?",
]

ACKNOWLEDGEMENTS = [
    "Oh, that sounds really nice.",
    "Right, I know exactly what you mean.",
    "Really? I did not know that.",
    "That makes a lot of sense to me.",
    "Oh wow, that is great to hear.",
    "I see, that is interesting.",
    "Yes, I have heard the same thing from other people.",
    "Well, that is not what I expected.",
]

BACK_QUESTIONS = [
    "What about you?",
    "And how about you?",
    "Have you ever tried that yourself?",
    "Do you feel the same way?",
]

# Optional lead-ins for statements ("Well, I think ..."): they multiply the distinct sentences.
LEAD_INS = ["", "Well, ", "Actually, ", "To be honest, ", "You know, "]

CLOSINGS = [
    "Well, I should get going, but it was great talking to you.",
    "Let us talk about this again next week.",
    "Thank you for telling me all about it.",
    "I have to run now, but we should meet again soon.",
]

# Each topic: an opening question, answers, follow-up questions, details and the slot values.
TOPICS: dict[str, dict[str, list[str] | dict[str, list[str]]]] = {
    "weekend": {
        "open": [
            "What did you do over the weekend?",
            "Did you do anything fun on Saturday?",
            "How was your weekend?",
        ],
        "answer": [
            "I spent most of the weekend at the {place} with my {relative}.",
            "We went to the {place} on Saturday and stayed there until the evening.",
            "I stayed at home and {activity}, which was exactly what I needed.",
            "My {relative} came to visit, so we {activity} together.",
        ],
        "follow": [
            "Was the weather good while you were there?",
            "Did you get to relax at all?",
            "Would you go back there again?",
        ],
        "detail": [
            "The weather was {weather}, so we stayed outside most of the day.",
            "It was a little {feeling}, but I am glad we did it.",
            "We had lunch at a small place near the {place}.",
            "Next time I want to bring my {relative} along as well.",
        ],
        "slots": {
            "place": ["lake", "beach", "park", "river", "mountains", "market", "museum", "farm"],
            "relative": ["brother", "sister", "father", "mother", "cousin", "uncle", "aunt", "friends"],
            "activity": ["cleaned the kitchen", "read a long book", "cooked a big dinner",
                         "watched old movies", "worked in the garden", "painted the fence"],
            "weather": ["lovely", "warm and sunny", "cold but clear", "a bit windy", "perfect"],
            "feeling": ["tiring", "expensive", "crowded", "stressful", "long"],
        },
    },
    "cooking": {
        "open": [
            "Have you been cooking anything new lately?",
            "What are you making for dinner tonight?",
            "Do you like to cook at home?",
        ],
        "answer": [
            "I have been making {dish} almost every {day}.",
            "Tonight I am making {dish} with fresh {vegetable} from the market.",
            "I learned how to make {dish} from my {relative} last month.",
            "I tried a new recipe for {dish}, and it turned out {result}.",
        ],
        "follow": [
            "How long does it take to make?",
            "Is it hard to get it right?",
            "Where did you find the recipe?",
        ],
        "detail": [
            "The secret is to add a little {spice} at the very end.",
            "It takes about {minutes} minutes, so it is good for a busy night.",
            "My {relative} says it is the best thing I cook.",
            "I always buy the {vegetable} on the same morning.",
        ],
        "slots": {
            "dish": ["chicken soup", "fresh bread", "vegetable curry", "fish tacos", "apple pie",
                     "pasta with tomato sauce", "fried rice", "beef stew"],
            "day": ["week", "weekend", "Sunday", "Friday night"],
            "vegetable": ["tomatoes", "carrots", "potatoes", "onions", "peppers", "beans"],
            "relative": ["mother", "father", "grandmother", "neighbor", "best friend", "sister"],
            "result": ["really well", "better than I expected", "a little too salty", "just fine"],
            "spice": ["salt", "pepper", "lemon juice", "garlic", "butter", "sugar"],
            "minutes": ["twenty", "thirty", "forty", "fifteen", "sixty"],
        },
    },
    "travel": {
        "open": [
            "Are you going anywhere this summer?",
            "Where was the last place you traveled to?",
            "Do you have any trips planned this year?",
        ],
        "answer": [
            "We are planning to drive to the {region} for {length}.",
            "Last month I took the train to the {region} to see my {relative}.",
            "I would love to fly to {country} some day, but it costs a lot.",
            "We went to {country} in the spring and loved every minute of it.",
        ],
        "follow": [
            "How long does it take to get there?",
            "What was the best part of the trip?",
            "Did you travel on your own?",
        ],
        "detail": [
            "The {transport} ride alone took almost {hours} hours.",
            "The food was {quality}, and the people were very kind.",
            "We stayed in a small hotel right next to the {sight}.",
            "I took hundreds of pictures of the {sight}.",
        ],
        "slots": {
            "region": ["coast", "north", "south", "mountains", "desert", "city", "islands"],
            "length": ["a week", "two weeks", "a few days", "the whole month"],
            "relative": ["grandmother", "brother", "old friends", "cousins", "parents"],
            "country": ["Italy", "Japan", "Canada", "Mexico", "Spain", "France", "Greece"],
            "transport": ["train", "bus", "car", "boat", "plane"],
            "hours": ["three", "five", "six", "eight", "ten", "twelve"],
            "quality": ["wonderful", "amazing", "simple but good", "very spicy", "cheap and tasty"],
            "sight": ["old church", "harbor", "castle", "main square", "train station", "beach"],
        },
    },
    "work": {
        "open": [
            "How are things going at work?",
            "Are you still working at the same company?",
            "Is work keeping you busy these days?",
        ],
        "answer": [
            "Work has been {pace} since we started the new {project}.",
            "I moved to a new team that works on the {project}.",
            "My manager asked me to lead the {project} this year.",
            "We hired {number} new people, so there is a lot of training to do.",
        ],
        "follow": [
            "Do you enjoy the new role?",
            "Are you working long hours?",
            "When does the project have to be finished?",
        ],
        "detail": [
            "The deadline is at the end of {month}, so we have to move quickly.",
            "I usually start at {hour} in the morning and finish late.",
            "Most of my day is spent in meetings with the {group}.",
            "It is {feeling}, but I am learning a lot.",
        ],
        "slots": {
            "pace": ["very busy", "quite slow", "pretty stressful", "a lot of fun", "hard work"],
            "project": ["website", "phone app", "sales report", "training program", "new office",
                        "customer survey"],
            "number": ["two", "three", "four", "five", "six"],
            "month": ["March", "April", "June", "August", "October", "December"],
            "hour": ["seven", "eight", "nine", "six"],
            "group": ["design team", "customers", "sales people", "other managers"],
            "feeling": ["hard", "tiring", "exciting", "a little scary", "very rewarding"],
        },
    },
    "weather": {
        "open": [
            "Can you believe the weather this week?",
            "Did you get caught in the rain yesterday?",
            "Do you think it will be warm tomorrow?",
        ],
        "answer": [
            "It has been {weather} every single day this week.",
            "I got completely wet walking home from the {place}.",
            "The radio said it will be {weather} until the weekend.",
            "I had to wear my {clothing} all day long.",
        ],
        "follow": [
            "Is it always like this in {month}?",
            "Did you hear what the forecast says for tomorrow?",
            "Do you prefer hot or cold weather?",
        ],
        "detail": [
            "Last year it was even worse around this time.",
            "I hope it gets better before we go to the {place}.",
            "My {relative} says it is the coldest {month} in years.",
            "I like it when it is {weather}, to be honest.",
        ],
        "slots": {
            "weather": ["cold and rainy", "hot and dry", "windy", "cloudy", "warm and sunny",
                        "freezing"],
            "place": ["station", "office", "store", "library", "park", "school"],
            "clothing": ["winter coat", "rain jacket", "warm hat", "old boots", "wool sweater"],
            "month": ["January", "February", "November", "July", "May", "September"],
            "relative": ["father", "mother", "neighbor", "grandfather", "uncle"],
        },
    },
    "movies": {
        "open": [
            "Have you seen any good movies lately?",
            "What are you watching at the moment?",
            "Did you go to the cinema last week?",
        ],
        "answer": [
            "I watched a {genre} movie about a {character}, and it was {opinion}.",
            "We saw the new {genre} film on {day} night.",
            "I have been watching an old {genre} series with my {relative}.",
            "I fell asleep halfway through a {genre} movie last night.",
        ],
        "follow": [
            "Would you recommend it to me?",
            "Who was in it?",
            "How does it end?",
        ],
        "detail": [
            "The music was {opinion}, and the ending surprised everyone.",
            "It was a little too long, almost {hours} hours.",
            "My {relative} cried at the end, which was funny to watch.",
            "The story is about a {character} who moves to a small town.",
        ],
        "slots": {
            "genre": ["funny", "scary", "science fiction", "romantic", "action", "family"],
            "character": ["young doctor", "lonely farmer", "famous singer", "police officer",
                          "teacher", "little dog"],
            "opinion": ["really good", "quite boring", "beautiful", "better than the book",
                        "a bit strange"],
            "day": ["Friday", "Saturday", "Tuesday", "Sunday"],
            "relative": ["sister", "husband", "wife", "son", "daughter", "roommate"],
            "hours": ["three", "two and a half", "four"],
        },
    },
    "sports": {
        "open": [
            "Did you watch the game last night?",
            "Are you still playing {sport} on the weekends?",
            "Do you do any sports these days?",
        ],
        "answer": [
            "I play {sport} with some friends every {day} morning.",
            "Our team lost the game by {number} points, which was hard to watch.",
            "I started running again, about {number} miles a week.",
            "I watched the whole game at my {relative}'s house.",
        ],
        "follow": [
            "Is it hard to find the time?",
            "Who do you usually play with?",
            "Do you think they will win next week?",
        ],
        "detail": [
            "My knees hurt a little afterwards, but it is worth it.",
            "We always go for coffee after we finish.",
            "The coach says we are getting better every week.",
            "It keeps me healthy, and I sleep much better.",
        ],
        "slots": {
            "sport": ["tennis", "soccer", "basketball", "golf", "volleyball", "baseball"],
            "day": ["Saturday", "Sunday", "Monday", "Wednesday"],
            "number": ["two", "three", "five", "seven", "ten"],
            "relative": ["brother", "father", "uncle", "cousin", "neighbor"],
        },
    },
    "home": {
        "open": [
            "How is the new apartment working out?",
            "Are you still fixing up the house?",
            "Did you finish painting the {room}?",
        ],
        "answer": [
            "We finally finished the {room}, and it looks {opinion}.",
            "The {room} still needs a lot of work, to be honest.",
            "We bought a new {furniture} for the {room} last week.",
            "My {relative} helped me move all the boxes on {day}.",
        ],
        "follow": [
            "What color did you choose?",
            "Was it expensive?",
            "How long did it take you?",
        ],
        "detail": [
            "It took us almost {number} weeks to get it done.",
            "The {furniture} was on sale, so we got a good price.",
            "The neighbors are very friendly and quiet.",
            "There is a lovely view of the {view} from the window.",
        ],
        "slots": {
            "room": ["kitchen", "bedroom", "living room", "bathroom", "garden", "garage"],
            "opinion": ["wonderful", "much brighter", "very modern", "really cozy"],
            "furniture": ["sofa", "table", "bed", "bookshelf", "desk", "lamp"],
            "relative": ["brother", "sister", "father", "best friend", "cousin"],
            "day": ["Saturday", "Sunday", "Friday", "Monday"],
            "number": ["two", "three", "four", "six"],
            "view": ["river", "park", "hills", "city", "garden", "lake"],
        },
    },
}


STATEMENTS = ("answer", "detail")  # the kinds that may take a lead-in


def _fill(template: str, slots: dict[str, list[str]], rng: random.Random) -> str:
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    return template.format(**{n: rng.choice(slots[n]) for n in names})


def _lead_in(sentence: str, rng: random.Random) -> str:
    lead = rng.choice(LEAD_INS)
    if not lead:
        return sentence
    first, rest = sentence.split(" ", 1)
    return lead + (first if first == "I" else first.lower()) + " " + rest


def _join(*sentences: str) -> str:
    return " ".join(s for s in sentences if s)


def make_dialogue(rng: random.Random, n_turns: int, topic: str | None = None) -> tuple[str, list[str]]:
    """Text of one conversation: ``(topic, [turn_0, turn_1, ...])``, speakers alternate A, B, A, ...

    Turn 0 greets and asks; answers carry one or two statements; the asker acknowledges and
    follows up; from turn 3 on the answerer sometimes asks back; the last turn closes.
    """
    if n_turns < 2:
        raise ValueError(f"a conversation needs at least 2 turns, got n_turns={n_turns}")
    topic = topic or rng.choice(sorted(TOPICS))
    t = TOPICS[topic]
    slots = t["slots"]

    def pick(kind: str) -> str:
        sentence = _fill(rng.choice(t[kind]), slots, rng)
        return _lead_in(sentence, rng) if kind in STATEMENTS else sentence

    turns = [_join(rng.choice(GREETINGS), pick("open"))]
    for i in range(1, n_turns):
        last = i == n_turns - 1
        if last:
            turns.append(_join(pick("detail") if rng.random() < 0.5 else rng.choice(ACKNOWLEDGEMENTS),
                               rng.choice(CLOSINGS)))
        elif i % 2 == 1:  # the answerer: a statement, often a detail, sometimes a question back
            back = rng.choice(BACK_QUESTIONS) if i >= 3 and rng.random() < 0.4 else ""
            turns.append(_join(pick("answer"), pick("detail") if rng.random() < 0.6 else "", back))
        else:  # the asker: acknowledge, then follow up (or answer a question put back to them)
            turns.append(_join(rng.choice(ACKNOWLEDGEMENTS), pick("follow") if rng.random() < 0.7 else pick("answer")))
    return topic, turns


def count_distinct_sentences() -> int:
    """How many distinct sentences the templates can produce (slot combinations, all topics)."""
    fixed = set(GREETINGS + ACKNOWLEDGEMENTS + BACK_QUESTIONS + CLOSINGS)
    n = len(fixed)
    for t in TOPICS.values():
        slots = t["slots"]
        for kind in ("open", "answer", "follow", "detail"):
            for template in t[kind]:
                names = sorted({f for _, f, _, _ in string.Formatter().parse(template) if f})
                combos = len(list(itertools.product(*(slots[k] for k in names)))) if names else 1
                n += combos * (len(LEAD_INS) if kind in STATEMENTS else 1)
    return n


# --- conversations of real sentences (sentences.py) ----------------------------------------------
class SentencePool:
    """One split's sentences by kind (``sentences.KINDS``), handed out in a shuffled order.

    ``start`` offsets where a conversation begins reading each list, so that consecutive
    conversations use different sentences and the corpus covers the pool before repeating it.
    """

    def __init__(self, by_kind: dict[str, list[str]], start: int = 0):
        if not any(by_kind.values()):
            raise ValueError("a sentence pool needs at least one sentence")
        self.by_kind, self.next = by_kind, {k: start for k in by_kind}

    def take(self, kind: str) -> str:
        """The next sentence of ``kind`` (a long statement when the split has none of that kind)."""
        if not self.by_kind.get(kind):
            kind = max(self.by_kind, key=lambda k: len(self.by_kind[k]))
        items = self.by_kind[kind]
        s = items[self.next[kind] % len(items)]
        self.next[kind] += 1
        return s


def make_natural_dialogue(rng: random.Random, n_turns: int, pool: SentencePool) -> tuple[str, list[str]]:
    """Text of one conversation of real sentences: ``("wordnet", [turn_0, turn_1, ...])``.

    The turn-taking of ``make_dialogue``: A opens with a short line and a question; the answerer
    gives one or two statements and, from turn 3 on, sometimes asks back; the asker acknowledges
    (a short statement) and asks a follow-up question or adds a statement; the last turn closes
    with short lines. What the sentences say does not follow from the question (WordNet's examples
    are unrelated to one another): the conversation has the shape of one, not its meaning.
    """
    if n_turns < 2:
        raise ValueError(f"a conversation needs at least 2 turns, got n_turns={n_turns}")
    turns = [_join(pool.take("short"), pool.take("question"))]
    for i in range(1, n_turns):
        if i == n_turns - 1:
            turns.append(_join(pool.take("short"), pool.take("short") if rng.random() < 0.5 else ""))
        elif i % 2 == 1:
            back = pool.take("question") if i >= 3 and rng.random() < 0.4 else ""
            turns.append(_join(pool.take("long"), pool.take("short") if rng.random() < 0.5 else "", back))
        else:
            turns.append(_join(pool.take("short"), pool.take("question") if rng.random() < 0.7 else pool.take("long")))
    return "wordnet", turns
