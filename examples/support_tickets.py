"""Synthetic support tickets over six labels, as OpenAI chat lines, split 80/20.

    python examples/support_tickets.py OUT_DIR [--count 360] [--seed 7]

writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl. Tickets are built from templates with varied
openings, products, details and closings, so the label has to be read from the ticket's substance."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LABELS = ["Authentication", "Billing", "Technical_Bug", "General_Support", "Sales", "Account_Management"]
SYSTEM = "Label the support ticket."

_SUBJECTS = {
    "Authentication": [
        "I cannot log in to my account",
        "my password reset link does not work",
        "two factor code is rejected",
        "the login page says my password is wrong",
        "I am locked out after too many attempts",
        "single sign on fails with an error",
        "the verification code never arrives",
        "my session keeps logging me out",
    ],
    "Billing": [
        "I was charged twice this month",
        "my invoice shows the wrong amount",
        "I need a refund for last payment",
        "the card payment was declined",
        "please explain this charge on my bill",
        "my invoice is missing the tax id",
        "I want to change my payment card",
        "the billing email shows an old price",
    ],
    "Technical_Bug": [
        "the app crashes when I open settings",
        "the export button shows an error",
        "the page is broken on mobile",
        "reports load forever and then fail",
        "the server returns error 500",
        "data import drops half the rows",
        "the dashboard chart shows wrong numbers",
        "the app freezes after the latest update",
    ],
    "General_Support": [
        "how do I use the search feature",
        "where can I find the user guide",
        "what are your support hours",
        "can you help me understand the dashboard",
        "is there a tutorial for new users",
        "how do I contact the support team",
        "what does this feature do",
        "where is the help center",
    ],
    "Sales": [
        "I want a demo of the enterprise plan",
        "what is the price for fifty users",
        "can we get a discount for a year",
        "I would like to talk to sales about a contract",
        "do you offer a trial for teams",
        "we want to upgrade to a bigger plan",
        "please send a quote for our company",
        "what does the premium plan include",
    ],
    "Account_Management": [
        "please change the email address on my profile",
        "I want to delete my account",
        "how do I add a new team member",
        "please transfer ownership to my colleague",
        "I need to update my company name",
        "remove a user from our team",
        "change my account settings to a new region",
        "merge my two accounts into one",
    ],
}
_OPENINGS = ["Hi,", "Hello team,", "Good morning.", "Hey there!", "Dear support,", "", "Urgent:", "Quick question:"]
_DETAILS = [
    "",
    " since yesterday",
    " for the third time",
    " on my laptop",
    " and I need it fixed today",
    " for our whole team",
    " after the update",
    " this week",
]
_CLOSINGS = ["", " Thanks.", " Please help.", " Regards, Sam", " Thank you!", " Any ideas?", " Cheers", " Best, Alex"]


def ticket(rng: random.Random, label: str) -> str:
    text = f"{rng.choice(_OPENINGS)} {rng.choice(_SUBJECTS[label])}{rng.choice(_DETAILS)}.{rng.choice(_CLOSINGS)}"
    return text.strip()


def chat_line(text: str, label: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ]
    }


def make(count: int = 360, seed: int = 7) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    rows = [chat_line(ticket(rng, LABELS[i % len(LABELS)]), LABELS[i % len(LABELS)]) for i in range(count)]
    rng.shuffle(rows)
    cut = int(len(rows) * 0.8)
    return rows[:cut], rows[cut:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=360)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    train, test = make(args.count, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(args.out_dir / f"{name}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{len(train)} training and {len(test)} held-out tickets in {args.out_dir}")


if __name__ == "__main__":
    main()
