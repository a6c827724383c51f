"""Write the example's documents: a short, self-written anti-money-laundering policy of a
fictional bank (Northwind Community Bank), as a PDF (one section per page), a DOCX with the
same text and an HTML procedures page. Self-written for stillhouse and placed in the public
domain; any resemblance to a real institution's policy is generic.

    python prompts/aml/make_documents.py DIR      # then: synth ingest DIR --out DIR/chunks.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

TITLE = "Northwind Community Bank: Anti-Money Laundering Policy"

POLICY = [
    ("1. Purpose and scope", [
        "This policy sets out how Northwind Community Bank prevents its products from being used to launder "
        "money or finance terrorism. It applies to every branch, every employee, every contractor who handles "
        "customer accounts, and every product, including current accounts, savings accounts, small business "
        "loans and international payments.",
        "The Board approves this policy once a year. The Money Laundering Reporting Officer (MLRO) owns it and "
        "reports on its operation to the Board every quarter.",
    ]),
    ("2. Customer due diligence", [
        "Staff must verify the identity of every new customer before an account is opened or a transaction is "
        "carried out. For an individual, staff record the full name, date of birth and residential address, and "
        "check them against one government-issued photo identity document and one proof of address dated within "
        "the last three months.",
        "For a company, staff record the registered name, registration number and registered office, and identify "
        "every beneficial owner who holds 25 percent or more of the shares or voting rights. If no person meets "
        "that threshold, the senior managing official is recorded as the beneficial owner.",
        "Staff must understand the purpose of the account and the expected source of funds. An account may not be "
        "opened until customer due diligence is complete.",
    ]),
    ("3. Enhanced due diligence", [
        "Enhanced due diligence applies to politically exposed persons, their family members and close associates, "
        "to customers established in a high-risk third country, and to any relationship the MLRO rates as high risk.",
        "Enhanced due diligence requires senior management approval before the relationship starts, evidence of "
        "the source of wealth and the source of funds, and a review of the relationship at least every six months "
        "instead of every two years.",
    ]),
    ("4. Ongoing monitoring", [
        "The transaction monitoring system screens every payment overnight. An alert must be reviewed by an analyst "
        "within two business days. Cash deposits of 10,000 euros or more in a single day, or several smaller "
        "deposits that together exceed that amount within seven days, always raise an alert.",
        "Customer information is refreshed every two years for standard-risk customers and every six months for "
        "high-risk customers, and immediately when a customer's activity no longer matches what was expected.",
    ]),
    ("5. Reporting suspicious activity", [
        "Any employee who knows or suspects that a customer is involved in money laundering must report it to the "
        "MLRO through an internal suspicious activity report within 24 hours. The employee must not tell the customer "
        "or anyone else that a report has been made: tipping off is a criminal offence.",
        "The MLRO decides within five business days whether to file a report with the national financial "
        "intelligence unit, and records the reasons for the decision either way. The MLRO can be reached at "
        "mlro@northwind-bank.example or on extension 4410.",
    ]),
    ("6. Sanctions screening", [
        "Every customer, beneficial owner and payment counterparty is screened against the national and United "
        "Nations sanctions lists at onboarding and whenever the lists change. A potential match freezes the payment "
        "until the sanctions team confirms or clears it; a confirmed match is reported to the competent authority "
        "the same day.",
    ]),
    ("7. Record keeping and training", [
        "Identification documents, transaction records and internal reports are kept for five years after the end "
        "of the customer relationship or the date of an occasional transaction.",
        "Every employee completes anti-money-laundering training when they join and every year after that. Staff in "
        "the payments and onboarding teams complete an additional scenario-based module every six months.",
    ]),
]

PROCEDURES = [
    ("Procedure: what to do if a customer refuses to provide identification", [
        "Do not open the account and do not carry out the transaction. Explain politely that the bank is required "
        "by law to verify the identity of all customers. Record the refusal in the onboarding system and consider "
        "whether the refusal itself is suspicious; if it is, submit an internal suspicious activity report to the MLRO.",
    ]),
    ("Procedure: what to do if a payment matches a sanctions list", [
        "Stop the payment and do not inform the customer of the reason. Send the alert to the sanctions team with the "
        "payment details. The sanctions team confirms or clears the match within one business day.",
    ]),
]


def write_pdf(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_auto_page_break(auto=True, margin=15)
    for i, (heading, paragraphs) in enumerate(POLICY):
        pdf.add_page()
        if i == 0:
            pdf.set_font("Helvetica", "B", 15)
            pdf.multi_cell(0, 8, TITLE, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
        pdf.set_font("Helvetica", "B", 12)
        pdf.multi_cell(0, 7, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for text in paragraphs:
            pdf.ln(2)
            pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def write_docx(path: Path) -> None:
    import docx

    doc = docx.Document()
    doc.add_heading(TITLE, 0)
    for heading, paragraphs in POLICY:
        doc.add_heading(heading, 1)
        for text in paragraphs:
            doc.add_paragraph(text)
    doc.save(str(path))


def write_html(path: Path) -> None:
    from html import escape

    body = "".join(f"<h2>{escape(h)}</h2>" + "".join(f"<p>{escape(p)}</p>" for p in ps) for h, ps in PROCEDURES)
    path.write_text(f"<!doctype html><html><head><title>AML procedures</title></head><body><h1>AML procedures</h1>"
                    f"{body}</body></html>\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_pdf(out / "aml-policy.pdf")
    write_docx(out / "aml-policy.docx")
    write_html(out / "aml-procedures.html")
    print(f"wrote {out}/aml-policy.pdf, aml-policy.docx and aml-procedures.html")


if __name__ == "__main__":
    main()
