"""What mail clients write around a quoted message, per language: the word lists the body clean-up reads.

Everything here is data, matched with plain string operations (never a regex), so adding a language is
adding words. Every entry is lower-case and was taken from what a client actually sends (Gmail web and
app, Outlook desktop/web/mobile, Apple Mail, Thunderbird, Evolution, Yahoo, Hotmail, Mail.ru, Yandex,
Zoho, Samsung Email, and French/German webmails). `relay.mail.body` explains how each list is used.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------
# Attribution lines: "On <date>, <name> <address> wrote:" and its translations.

# The verb that ends (or, in German/Dutch/Scandinavian word order, sits inside) an attribution line.
WRITE_VERBS: tuple[str, ...] = (
    "wrote",  # en
    "writes",  # en (older clients)
    "wrote the following",  # en (Lotus, some webmails)
    "a écrit",  # fr
    "écrit",  # fr (wrapped: "… a" / "écrit :")
    "schrieb",  # de
    "hat geschrieben",  # de
    "geschrieben",  # de (Yahoo: "… hat John <j@x> Folgendes geschrieben:")
    "escribió",  # es
    "ha escrito",  # es
    "va escriure",  # ca
    "ha escrit",  # ca (Thunderbird)
    "ha scritto",  # it
    "scritto",  # it (wrapped)
    "schreef",  # nl
    "heeft geschreven",  # nl
    "het volgende geschreven",  # nl (Apple Mail)
    "geschreven",  # nl
    "escreveu",  # pt
    "skrev",  # sv, da, no
    "kirjoitti",  # fi
    "napisał(a)",  # pl (Gmail)
    "napisał",  # pl
    "napisała",  # pl
    "pisze",  # pl (Thunderbird)
    "napisana przez",  # pl (Apple Mail: "Wiadomość napisana przez … w dniu …:")
    "napsal",  # cs
    "napsala",  # cs
    "napsal(a)",  # cs
    "napísal",  # sk
    "írta",  # hu (“… ezt írta (időpont: …):”)
    "şunu yazdı",  # tr
    "yazdı",  # tr
    "έγραψε",  # el
    "a scris",  # ro
    "написал",  # ru
    "написала",  # ru
    "написал(а)",  # ru
    "пишет",  # ru (Mail.ru, The Bat!)
    "написав",  # uk
    "написав(-ла)",  # uk (Apple Mail)
    "пише",  # uk
    "đã viết",  # vi
    "menulis",  # id
    "写道",  # zh (simplified)
    "寫道",  # zh (traditional)
    "님이 작성",  # ko
    "작성",  # ko
    "쓴 글",  # ko (Thunderbird)
    "のメッセージ",  # ja (Outlook/Apple)
    "のメール",  # ja (Apple Mail)
    "さんは書きました",  # ja
    "書きました",  # ja
    "כתב",  # he
    "เขียนว่า",  # th
    "napisao je",  # hr, bs
    "napisala je",  # hr, bs
    "je napisao",  # hr, sr
    "je napisala",  # hr, sr
    "je napisal",  # sl
    "је написао",  # sr
    "написа",  # bg
    "rašė",  # lt
    "rakstīja",  # lv
    "kirjutas",  # et
    "كتب",  # ar
)

# Words that open an attribution line. A wrapped attribution's first line starts with one of them,
# and a line holding one of them with a date and a verb is an attribution even without an address.
ATTRIBUTION_STARTS: tuple[str, ...] = (
    "on",  # en
    "le",  # fr
    "am",  # de
    "el",  # es, ca
    "il",  # it ("il giorno")
    "op",  # nl
    "em",  # pt
    "den",  # sv, da
    "w dniu",  # pl (Thunderbird)
    "dne",  # cs (Thunderbird)
    "στις",  # el
    "în",  # ro
    "vào",  # vi
    "pada",  # id
    "в",  # ru (Thunderbird "В <date>, <name> пишет:")
    "у",  # uk
    "pe",  # ro (Apple Mail)
    "在",  # zh (Thunderbird)
    "no dia",  # pt (Apple Mail)
    "wiadomość napisana przez",  # pl (Apple Mail)
)

# ---------------------------------------------------------------------------
# Header blocks: Outlook's, Hotmail's, Yahoo's and webmails' "From: / Sent: / To: / Subject:".

# Header name (lower-case, as written before the colon) → which header it is.
HEADER_NAMES: dict[str, str] = {}
for _kind, _names in {
    "from": (
        "from",  # en
        "de",  # fr, es, pt, ca
        "von",  # de
        "da",  # it
        "van",  # nl
        "från",  # sv
        "fra",  # da, no
        "od",  # pl, cs
        "lähettäjä",  # fi
        "от",  # ru
        "від",  # uk
        "feladó",  # hu
        "kimden",  # tr
        "από",  # el
        "de la",  # ro
        "差出人",  # ja
        "发件人",  # zh
        "寄件者",  # zh-TW
        "보낸 사람",  # ko
        "van:",  # nl (doubled colon in some Outlook exports)
        "expéditeur",  # fr (webmails)
        "absender",  # de (webmails)
        "remitente",  # es (webmails)
        "mittente",  # it (webmails)
        "afzender",  # nl (webmails)
        "nadawca",  # pl (webmails)
        "отправитель",  # ru (webmails)
    ),
    "date": (
        "sent",  # en
        "date",  # en, fr
        "envoyé",  # fr
        "envoyé le",  # fr (Hotmail)
        "gesendet",  # de
        "datum",  # de, nl, sv
        "enviado",  # es, pt
        "enviado el",  # es
        "fecha",  # es (Samsung)
        "enviada",  # pt
        "enviado em",  # pt-BR
        "enviada em",  # pt
        "enviat",  # ca
        "enviat el",  # ca
        "inviato",  # it
        "data",  # it, pl, pt
        "verzonden",  # nl
        "skickat",  # sv
        "sendt",  # da, no
        "dato",  # da, no
        "wysłano",  # pl
        "wysłane",  # pl
        "lähetetty",  # fi
        "päivämäärä",  # fi
        "отправлено",  # ru
        "дата",  # ru, uk
        "надіслано",  # uk
        "odesláno",  # cs
        "elküldve",  # hu
        "dátum",  # hu
        "gönderildi",  # tr
        "tarih",  # tr
        "στάλθηκε",  # el
        "ημερομηνία",  # el
        "trimis",  # ro
        "enviat",  # ca
        "送信日時",  # ja
        "日付",  # ja
        "发送时间",  # zh
        "时间",  # zh
        "日期",  # zh
        "寄件日期",  # zh-TW
        "보낸 날짜",  # ko
        "날짜",  # ko
        "message du",  # fr webmails (Orange, SFR, La Poste)
    ),
    "to": (
        "to",  # en
        "à",  # fr
        "a",  # fr (webmails without accents), es, it, ca
        "an",  # de
        "para",  # es, pt
        "per",  # ca
        "per a",  # ca
        "aan",  # nl
        "till",  # sv
        "til",  # da, no
        "do",  # pl, cs
        "vastaanottaja",  # fi
        "кому",  # ru, uk
        "címzett",  # hu
        "kime",  # tr
        "προς",  # el
        "către",  # ro
        "komu",  # cs
        "宛先",  # ja
        "收件人",  # zh
        "收件者",  # zh-TW
        "받는 사람",  # ko
        "destinataire",  # fr (webmails)
        "empfänger",  # de (webmails)
    ),
    "cc": (
        "cc",
        "kopi",  # da, no
        "kopio",  # fi
        "dw",  # pl
        "κοιν.",  # el
        "bcc",
        "kopie",
        "copie à",
        "copia",
        "kopia",
        "копия",
        "másolatot kap",
        "bilgi",
        "κοιν",
        "抄送",
        "副本",
        "참조",
    ),
    "subject": (
        "subject",  # en
        "objet",  # fr
        "sujet",  # fr (webmails)
        "betreff",  # de
        "asunto",  # es
        "oggetto",  # it
        "onderwerp",  # nl
        "ämne",  # sv
        "emne",  # da, no
        "temat",  # pl
        "assunto",  # pt
        "assumpte",  # ca
        "aihe",  # fi
        "тема",  # ru, uk
        "předmět",  # cs
        "tárgy",  # hu
        "konu",  # tr
        "θέμα",  # el
        "subiect",  # ro
        "件名",  # ja
        "主题",  # zh
        "主旨",  # zh-TW
        "제목",  # ko
    ),
}.items():
    for _name in _names:
        HEADER_NAMES.setdefault(_name.rstrip(":"), _kind)
del _kind, _names, _name
LONGEST_HEADER = max(len(name) for name in HEADER_NAMES)

# ---------------------------------------------------------------------------
# Separator lines: "-----Original Message-----", "-------- Forwarded Message --------", … (between dashes,
# equals signs or underscores), and the forward introductions Apple Mail writes without dashes.

SEPARATOR_PHRASES: frozenset[str] = frozenset(
    {
        "original message",
        "original e-mail",
        "forwarded message",
        "forwarded e-mail",
        "mail original",  # Zimbra in French (Free)
        "mail transféré",
        "ursprüngliche mail",  # Zimbra in German
        "weitergeleitete mail",
        "původní e-mail",  # Seznam
        "původní email",
        "pôvodný e-mail",
        "eredeti levél",
        "e-mail original",
        "message d'origine",
        "message d’origine",
        "message original",
        "message transféré",
        "courriel original",
        "ursprüngliche nachricht",
        "originalnachricht",
        "original-nachricht",
        "weitergeleitete nachricht",
        "mensaje original",
        "mensaje reenviado",
        "missatge original",
        "missatge reenviat",
        "messaggio originale",
        "messaggio inoltrato",
        "oorspronkelijk bericht",
        "origineel bericht",
        "doorgestuurd bericht",
        "mensagem original",
        "mensagem encaminhada",
        "ursprungligt meddelande",
        "originalmeddelande",
        "vidarebefordrat meddelande",
        "oprindelig meddelelse",
        "oprindelig besked",
        "videresendt meddelelse",
        "videresendt besked",
        "opprinnelig melding",
        "original melding",
        "videresendt melding",
        "alkuperäinen viesti",
        "välitetty viesti",
        "wiadomość oryginalna",
        "oryginalna wiadomość",
        "przekazana wiadomość",
        "původní zpráva",
        "přeposlaná zpráva",
        "pôvodná správa",
        "eredeti üzenet",
        "továbbított üzenet",
        "orijinal mesaj",
        "özgün ileti",
        "iletilen mesaj",
        "αρχικό μήνυμα",
        "προωθημένο μήνυμα",
        "mesaj original",
        "mesaj redirecționat",
        "исходное сообщение",
        "оригинальное сообщение",
        "пересылаемое сообщение",
        "пересланное сообщение",
        "оригінальне повідомлення",
        "вихідне повідомлення",
        "пересланий лист",
        "原始邮件",
        "原始郵件",
        "转发的邮件",
        "轉寄的郵件",
        "元のメッセージ",
        "オリジナルメッセージ",
        "転送されたメッセージ",
        "원본 메시지",
        "전달된 메시지",
        "thư gốc",
    }
)

# Whole lines that start a forwarded or original message without any dashes (Apple Mail, iPhone, Yandex).
FORWARD_INTROS: frozenset[str] = frozenset(
    {
        "begin forwarded message",
        "début du message réexpédié",
        "début du message transféré",
        "anfang der weitergeleiteten nachricht",
        "inicio del mensaje reenviado",
        "inizio messaggio inoltrato",
        "begin doorgestuurd bericht",
        "início da mensagem reencaminhada",
        "início da mensagem encaminhada",
        "vidarebefordrat brev",
        "videresendt besked",
        "start på videresendt besked",
        "välitetty viesti alkaa",
        "początek przekazanej wiadomości",
        "начало переадресованного сообщения",
        "пересылаемое сообщение",
        "転送されたメッセージ",
        "以下为转发的邮件",
    }
)

# ---------------------------------------------------------------------------
# Mobile footers (SPEC §5 step 3): a short line starting with one of these, alone on its line.

FOOTER_PREFIXES: tuple[str, ...] = (
    "sent from my ",
    "sent from mail for windows",
    "sent from yahoo mail",
    "sent from outlook",
    "sent from the all new aol app",
    "sent from samsung",
    "sent from my galaxy",
    "sent from zoho mail",
    "sent with protonmail",
    "sent from proton mail",
    "get outlook for ios",
    "get outlook for android",
    "envoyé de mon ",
    "envoyé depuis mon ",
    "envoyé à partir de ",
    "envoyé de outlook pour",
    "envoyé de yahoo mail",
    "obtenir outlook pour ios",
    "obtenir outlook pour android",
    "télécharger outlook pour",
    "von meinem iphone gesendet",
    "von meinem ipad gesendet",
    "von meinem samsung",
    "von meinem smartphone gesendet",
    "gesendet von meinem ",
    "gesendet von mail für windows",
    "von mail für windows gesendet",
    "gesendet von yahoo mail",
    "outlook für ios beziehen",
    "outlook für android herunterladen",
    "enviado desde mi ",
    "enviado desde yahoo mail",
    "obtener outlook para",
    "enviado do meu ",
    "enviado de meu ",
    "enviado do yahoo mail",
    "inviato da iphone",
    "inviato dal mio ",
    "inviato da yahoo mail",
    "scarica outlook per",
    "verzonden vanaf mijn ",
    "verstuurd vanaf mijn ",
    "verzonden met outlook",
    "verzonden vanaf outlook",
    "verzonden met mail voor windows",
    "outlook voor ios downloaden",
    "skickat från min ",
    "skickat från outlook",
    "sendt fra min ",
    "sendt fra outlook",
    "hent outlook til",
    "lähetetty iphonesta",
    "lähetetty ipadista",
    "lähetetty android",
    "wysłane z mojego ",
    "wysłano z mojego ",
    "wysłane z iphone",
    "enviat des del meu ",
    "enviat des de ",
    "odesláno z iphonu",
    "odesláno z mého ",
    "iphone-ról küldve",
    "iphone'umdan gönderildi",
    "στάλθηκε από το iphone",
    "trimis de pe iphone",
    "отправлено с iphone",
    "отправлено с моего ",
    "отправлено из мобильной ",
    "отправлено из приложения ",
    "отправлено с помощью ",
    "надіслано з iphone",
    "надіслано з мого ",
    "发自我的",
    "从我的iphone发送",
    "寄件者為 iphone",
    "iphoneから送信",
    "ipadから送信",
    "내 iphone에서 보냄",
    "galaxy에서 보냄",
    "galaxy から送信",
    "lähetetty galaxy",
    "отправлено с устройства ",
    "galaxy eszközről küldve",
    "elküldve a galaxy",
    "galaxy cihazımdan gönderildi",
    "στάλθηκε από το galaxy",
    "trimis de pe ",
    "enviado desde mi galaxy",
    "inviato dal mio galaxy",
    "elküldve az iphone",
    "從我的iphone傳送",
    "poslano s mog ",
    "poslano sa mog ",
    "poslano iz mojega ",
    "odoslané z ",
    "изпратено от моя ",
    "gửi từ iphone",
    "dikirim dari iphone",
    "dikirim dari perangkat",
    "נשלח מה",
    "أرسلت من",
    "أُرسلت من",
    "ส่งจาก iphone",
)
# Footers told by their two ends: "Von meinem Android-Gerät gesendet", "Von meinem Huawei-Telefon gesendet".
FOOTER_AROUND: tuple[tuple[str, str], ...] = (
    ("von meinem ", "gesendet"),
    ("von meinem ", "gesendet."),
)
MAX_FOOTER = 70  # a footer is short; a longer line starting "Sent from my…" is the sender's sentence
