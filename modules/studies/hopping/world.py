"""Study 3's curated real-world two-hop queries, for pretrained LMs.

The paper builds 82,020 queries from live Wikidata (not reproducible offline, and mostly about entities
a 135M-parameter model cannot know). We curate a small set instead: famous entities whose facts are
stable and unambiguous (capitals, currencies and languages of famous countries, the countries of
famous landmarks, cities and companies, the authors of famous books, the founders of famous companies
...), with the paper's relation templates, prompt nesting and alias lists. Each query is
e1 -r1-> e2 -r2-> e3 and asks for e3 through the latent bridge e2:

    the capital of the country of Mount Fuji is        (Mount Fuji -country-> Japan -capital-> Tokyo)

The canonical set is written here once and frozen into ``data/hopping_world.yaml`` (data.dvc), which
the pipeline reads: a team curates that file and shares it through DVC. :func:`load_world` checks it,
so a malformed or hand-edited file fails with one line. Prompts are derived by code, never typed.
Landmark labels carry their English article ("the Eiffel Tower") so the prompts read naturally; the
bare name is an alias. Query ids are stable: append new queries, never renumber.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import yaml

from modules.core.io import atomic_write_text, read_yaml_mapping
from modules.studies.hopping.matching import AnswerInPromptError, answer_aliases, check_answer_not_in_prompt

# The paper's 29 relations (rbe templates, as its code words them), then the few we add.
RELATIONS: dict[str, str] = {
    "country of citizenship": "the country of citizenship of {}", "spouse": "the spouse of {}",
    "father": "the father of {}", "mother": "the mother of {}", "capital": "the capital of {}",
    "currency": "the currency of {}", "central bank": "the central bank of {}",
    "composer": "the composer of {}", "performer": "the performer of {}",
    "location of formation": "the location of formation of {}", "record label": "the record label of {}",
    "director": "the director of {}", "producer": "the producer of {}", "screenwriter": "the screenwriter of {}",
    "country of origin": "the country of origin of {}", "developer": "the developer of {}",
    "chief executive officer": "the chief executive officer of {}",
    "headquarters location": "the headquarters location of {}", "author": "the author of {}",
    "publisher": "the publisher of {}", "employer": "the employer of {}", "head of state": "the head of state of {}",
    "chief operating officer": "the chief operating officer of {}", "anthem": "the national anthem of {}",
    "notable work": "the most notable work of {}", "production company": "the company that produced {}",
    "owned by": "the owner of {}", "present in work": "the work that features {}", "founder": "the founder of {}",
    # ours: Wikidata's country (P17), official language (P37), creator (P170), place of birth (P19)
    "country": "the country of {}", "official language": "the official language of {}",
    "creator": "the creator of {}", "place of birth": "the birthplace of {}",
}

# Aliases of the entities that have common other names (the rest have none). Aliases of one
# character, and aliases that are fragments of common words ("UK" in "Ukraine", "real" in "really"),
# are left out: the paper's substring rule would match them by accident.
ALIASES: dict[str, tuple[str, ...]] = {
    # countries
    "United States": ("USA", "U.S.", "United States of America", "America"),
    "United Kingdom": ("U.K.", "Britain", "Great Britain", "United Kingdom of Great Britain and Northern Ireland"),
    "China": ("People's Republic of China",), "Russia": ("Russian Federation",),
    "Turkey": ("Türkiye", "Turkiye"), "South Korea": ("Republic of Korea",),
    "Netherlands": ("Holland", "the Netherlands"), "Ireland": ("Republic of Ireland",),
    "United Arab Emirates": ("UAE", "Emirates"),
    # capitals and cities
    "Washington, D.C.": ("Washington", "Washington DC", "Washington D.C."), "New Delhi": ("Delhi",),
    "Brasília": ("Brasilia",), "Bogotá": ("Bogota",), "Reykjavík": ("Reykjavik",), "Bern": ("Berne",),
    "Kraków": ("Krakow", "Cracow"), "Zurich": ("Zürich",), "Munich": ("München",),
    "Frankfurt": ("Frankfurt am Main",), "New York City": ("New York", "NYC"),
    "Stratford-upon-Avon": ("Stratford upon Avon", "Stratford"), "Gary": ("Gary, Indiana",),
    "Tupelo": ("Tupelo, Mississippi",), "Bay City": ("Bay City, Michigan",), "Redmond": ("Redmond, Washington",),
    "Cupertino": ("Cupertino, California",), "Bellevue": ("Bellevue, Washington",),
    "San Jose": ("San Jose, California",), "Mountain View": ("Mountain View, California",),
    "Menlo Park": ("Menlo Park, California",), "Burbank": ("Burbank, California",),
    "Málaga": ("Malaga",), "Żelazowa Wola": ("Zelazowa Wola",),
    "Saint Petersburg": ("St. Petersburg", "St Petersburg"), "Mexico City": ("Ciudad de México",),
    # currencies
    "Japanese yen": ("yen",), "pound sterling": ("pound", "British pound", "sterling"),
    "United States dollar": ("US dollar", "U.S. dollar", "dollar"), "Indian rupee": ("rupee",),
    "Russian ruble": ("ruble", "rouble"), "renminbi": ("yuan", "Chinese yuan", "RMB"),
    "Mexican peso": ("peso",), "Argentine peso": ("peso",), "Swiss franc": ("franc",),
    "South Korean won": ("Korean won",), "Turkish lira": ("lira",), "Swedish krona": ("krona",),
    "Polish złoty": ("zloty", "złoty"), "Thai baht": ("baht",), "Norwegian krone": ("krone",),
    "Danish krone": ("krone",), "UAE dirham": ("dirham", "Emirati dirham"),
    # languages and anthems
    "Standard Chinese": ("Mandarin", "Chinese", "Mandarin Chinese", "Putonghua"),
    "La Marseillaise": ("Marseillaise",), "The Star-Spangled Banner": ("Star-Spangled Banner", "Star Spangled Banner"),
    "Kimigayo": ("Kimi ga Yo",), "Wilhelmus": ("Het Wilhelmus",),
    "Deutschlandlied": ("Das Lied der Deutschen", "Song of Germany"), "God Save the King": ("God Save the Queen",),
    "March of the Volunteers": ("Yiyongjun Jinxingqu",), "Marcha Real": ("Royal March",),
    # landmarks (the label carries the article, the alias is the bare name)
    "the Eiffel Tower": ("Eiffel Tower", "Tour Eiffel"), "the Colosseum": ("Colosseum", "Coliseum"),
    "the Statue of Liberty": ("Statue of Liberty",), "the Sydney Opera House": ("Sydney Opera House",),
    "the Taj Mahal": ("Taj Mahal",), "the Pyramids of Giza": ("Pyramids of Giza", "Giza pyramids"),
    "the Kremlin": ("Kremlin",), "the Brandenburg Gate": ("Brandenburg Gate",), "the Alhambra": ("Alhambra",),
    "the CN Tower": ("CN Tower",), "the Parthenon": ("Parthenon",), "the Forbidden City": ("Forbidden City",),
    "Christ the Redeemer": ("Cristo Redentor",), "Chichen Itza": ("Chichén Itzá",), "Uluru": ("Ayers Rock",),
    # organisations and companies
    "the United Nations": ("United Nations",), "the International Olympic Committee":
        ("International Olympic Committee", "IOC"), "the European Central Bank": ("European Central Bank", "ECB"),
    "the World Health Organization": ("World Health Organization",), "the Scout movement": ("Scouting",),
    "the Nobel Prize": ("Nobel Prize",),
    "Samsung": ("Samsung Group",), "Mojang Studios": ("Mojang",), "CD Projekt Red": ("CD Projekt",),
    "Rovio Entertainment": ("Rovio",), "Valve": ("Valve Corporation",), "Adobe": ("Adobe Inc.", "Adobe Systems"),
    "Apple": ("Apple Inc.",), "Meta Platforms": ("Meta", "Facebook"), "Google": ("Google LLC",),
    "The Walt Disney Company": ("Disney", "Walt Disney Company"), "Microsoft": ("Microsoft Corporation",),
    "LEGO": ("The Lego Group",), "Ford Motor Company": ("Ford",), "KFC": ("Kentucky Fried Chicken",),
    # works
    "Harry Potter and the Philosopher's Stone": ("Harry Potter and the Sorcerer's Stone",),
    "Nineteen Eighty-Four": ("1984",), "Mrs Dalloway": ("Mrs. Dalloway",),
    "On the Origin of Species": ("The Origin of Species",), "Single Ladies": ("Single Ladies (Put a Ring on It)",),
    "...Baby One More Time": ("Baby One More Time",),
    "The Witcher 3: Wild Hunt": ("The Witcher 3",), "Whenever, Wherever": ("Whenever Wherever",),
    "These Boots Are Made for Walkin'": ("These Boots Are Made for Walking",),
    "The Lord of the Rings: The Fellowship of the Ring": ("The Fellowship of the Ring",),
    "the Moomins": ("Moomins", "Moomin"),
    "Kinderszenen": ("Scenes from Childhood",), "the Minute Waltz": ("Minute Waltz",),
    "the Brandenburg Concertos": ("Brandenburg Concertos",), "The Four Seasons": ("Le quattro stagioni",),
    # people
    "J. K. Rowling": ("JK Rowling", "J.K. Rowling", "Joanne Rowling"), "Gabriel García Márquez":
        ("Gabriel Garcia Marquez", "García Márquez"), "George Orwell": ("Eric Arthur Blair",),
    "J. R. R. Tolkien": ("Tolkien", "J.R.R. Tolkien"), "J. D. Salinger": ("Salinger", "J.D. Salinger"),
    "Antoine de Saint-Exupéry": ("Saint-Exupéry", "Saint-Exupery"), "José Saramago": ("Jose Saramago", "Saramago"),
    "Patrick Süskind": ("Patrick Suskind", "Süskind"), "Carlos Ruiz Zafón": ("Carlos Ruiz Zafon",),
    "William Shakespeare": ("Shakespeare",), "Johann Wolfgang von Goethe": ("Goethe",),
    "Dante Alighieri": ("Dante",), "Leo Tolstoy": ("Tolstoy", "Lev Tolstoy"),
    "Miguel de Cervantes": ("Cervantes",), "Charles Dickens": ("Dickens",), "James Joyce": ("Joyce",),
    "Barack Obama": ("Barack Hussein Obama",), "Michelle Obama": ("Michelle Robinson",),
    "F. Scott Fitzgerald": ("Scott Fitzgerald", "F Scott Fitzgerald"), "Zelda Fitzgerald": ("Zelda Sayre",),
    "Percy Bysshe Shelley": ("Percy Shelley",), "Mary Shelley": ("Mary Godwin",),
    "Sophia Tolstaya": ("Sofia Tolstaya", "Sophia Andreyevna Tolstaya"), "Emma Darwin": ("Emma Wedgwood",),
    "Ann Dunham": ("Stanley Ann Dunham",), "Steven Spielberg": ("Spielberg",), "Hayao Miyazaki": ("Miyazaki",),
    "Akira Kurosawa": ("Kurosawa",), "Bong Joon-ho": ("Bong Joon Ho",), "Quentin Tarantino": ("Tarantino",),
    "Céline Dion": ("Celine Dion",), "Psy": ("Park Jae-sang",), "Beyoncé": ("Beyonce", "Beyoncé Knowles"),
    "Jay-Z": ("Jay Z", "Shawn Carter"), "Elvis Presley": ("Elvis",), "The Beatles": ("Beatles",),
    "The Rolling Stones": ("Rolling Stones",), "Guns N' Roses": ("Guns N Roses", "Guns and Roses"),
    "AC/DC": ("ACDC",), "Bob Marley and the Wailers": ("The Wailers",),
    "Édith Piaf": ("Edith Piaf",), "Billy Ray Cyrus": ("Billy Ray",),
    "Leopold Mozart": ("Johann Georg Leopold Mozart",),
    "Wolfgang Amadeus Mozart": ("Mozart",), "Ludwig van Beethoven": ("Beethoven",),
    "Johann Sebastian Bach": ("Bach", "J. S. Bach"), "Antonio Vivaldi": ("Vivaldi",),
    "Frédéric Chopin": ("Chopin", "Frederic Chopin"), "Richard Wagner": ("Wagner",),
    "Pyotr Ilyich Tchaikovsky": ("Tchaikovsky",), "Robert Schumann": ("Schumann",),
    "Clara Schumann": ("Clara Wieck",), "Maurice Ravel": ("Ravel",), "Claude Debussy": ("Debussy",),
    "Georges Bizet": ("Bizet",), "Erik Satie": ("Satie",), "George Gershwin": ("Gershwin",),
    "Jean Sibelius": ("Sibelius",), "Edvard Grieg": ("Grieg",), "Gustav Holst": ("Holst",),
    "Giuseppe Verdi": ("Verdi",), "Giacomo Puccini": ("Puccini",), "Arthur Conan Doyle": ("Conan Doyle",),
    "Hergé": ("Herge", "Georges Remi"), "Vincent van Gogh": ("Van Gogh",), "Pablo Picasso": ("Picasso",),
    "Salvador Dalí": ("Salvador Dali", "Dalí", "Dali"), "Edvard Munch": ("Munch",), "Auguste Rodin": ("Rodin",),
    "Andy Warhol": ("Warhol",), "Shigeru Miyamoto": ("Miyamoto",), "Akira Toriyama": ("Toriyama",),
    "Masashi Kishimoto": ("Kishimoto",), "Jeff Bezos": ("Bezos",), "Ingvar Kamprad": ("Kamprad",),
    "Enzo Ferrari": ("Enzo Anselmo Ferrari",), "Adolf Dassler": ("Adi Dassler",), "Coco Chanel": ("Gabrielle Chanel",),
    "Colonel Sanders": ("Harland Sanders",), "Sam Walton": ("Samuel Moore Walton",),
    "Gerard Adriaan Heineken": ("Gerard Heineken",), "Chung Ju-yung": ("Chung Ju-young",),
    "Dhirubhai Ambani": ("Dhirajlal Hirachand Ambani",), "William Boeing": ("William E. Boeing",),
    "J. C. Jacobsen": ("Jacob Christian Jacobsen",), "Robert Baden-Powell": ("Baden-Powell",),
    "Lee Byung-chul": ("Lee Byung-chull",), "Ren Zhengfei": ("Zhengfei Ren",),
    "Elizabeth II": ("Queen Elizabeth II", "Queen Elizabeth"), "Charles III": ("King Charles III", "Prince Charles"),
    "Prince Philip": ("Philip Mountbatten", "Duke of Edinburgh"), "Prince William": ("William, Prince of Wales",),
    "Diana, Princess of Wales": ("Princess Diana", "Lady Diana", "Diana Spencer"),
    "Prince George of Wales": ("Prince George",),
    "Pelé": ("Pele", "Edson Arantes do Nascimento"), "Diego Maradona": ("Maradona",),
    "Frida Kahlo": ("Kahlo",), "Cristiano Ronaldo": ("Ronaldo",), "Björk": ("Bjork",),
    "Greta Thunberg": ("Thunberg",), "Ho Chi Minh": ("Hồ Chí Minh",), "Fusajiro Yamauchi": ("Yamauchi",),
    "Ole Kirk Christiansen": ("Ole Kirk Kristiansen",),
    "Kofi Annan": ("Kofi Atta Annan",),
}

# (id, e1, r1, e2, r2, e3): the bridge e2 is what "the r1 of e1" names, the answer e3 what
# "the r2 of e2" names.
ROWS: tuple[tuple[str, str, str, str, str, str], ...] = (
    # places -> country -> capital
    ("q001", "the Eiffel Tower", "country", "France", "capital", "Paris"),
    ("q002", "Mount Fuji", "country", "Japan", "capital", "Tokyo"),
    ("q003", "the Colosseum", "country", "Italy", "capital", "Rome"),
    ("q004", "the Statue of Liberty", "country", "United States", "capital", "Washington, D.C."),
    ("q005", "Big Ben", "country", "United Kingdom", "capital", "London"),
    ("q006", "the Sydney Opera House", "country", "Australia", "capital", "Canberra"),
    ("q007", "the Taj Mahal", "country", "India", "capital", "New Delhi"),
    ("q008", "Machu Picchu", "country", "Peru", "capital", "Lima"),
    ("q009", "the Pyramids of Giza", "country", "Egypt", "capital", "Cairo"),
    ("q010", "Angkor Wat", "country", "Cambodia", "capital", "Phnom Penh"),
    ("q011", "the Kremlin", "country", "Russia", "capital", "Moscow"),
    ("q012", "Hagia Sophia", "country", "Turkey", "capital", "Ankara"),
    ("q013", "the Brandenburg Gate", "country", "Germany", "capital", "Berlin"),
    ("q014", "the Alhambra", "country", "Spain", "capital", "Madrid"),
    ("q015", "Petra", "country", "Jordan", "capital", "Amman"),
    ("q016", "Christ the Redeemer", "country", "Brazil", "capital", "Brasília"),
    ("q017", "Chichen Itza", "country", "Mexico", "capital", "Mexico City"),
    ("q018", "the CN Tower", "country", "Canada", "capital", "Ottawa"),
    ("q019", "Uluru", "country", "Australia", "capital", "Canberra"),
    ("q020", "Stonehenge", "country", "United Kingdom", "capital", "London"),
    ("q021", "the Parthenon", "country", "Greece", "capital", "Athens"),
    ("q022", "Barcelona", "country", "Spain", "capital", "Madrid"),
    ("q023", "Toronto", "country", "Canada", "capital", "Ottawa"),
    ("q024", "Istanbul", "country", "Turkey", "capital", "Ankara"),
    ("q025", "Rio de Janeiro", "country", "Brazil", "capital", "Brasília"),
    ("q026", "Shanghai", "country", "China", "capital", "Beijing"),
    ("q027", "Osaka", "country", "Japan", "capital", "Tokyo"),
    ("q028", "Munich", "country", "Germany", "capital", "Berlin"),
    ("q029", "Milan", "country", "Italy", "capital", "Rome"),
    ("q030", "Zurich", "country", "Switzerland", "capital", "Bern"),
    ("q031", "Mumbai", "country", "India", "capital", "New Delhi"),
    ("q032", "Sydney", "country", "Australia", "capital", "Canberra"),
    ("q033", "Auckland", "country", "New Zealand", "capital", "Wellington"),
    ("q034", "Lagos", "country", "Nigeria", "capital", "Abuja"),
    ("q035", "Saint Petersburg", "country", "Russia", "capital", "Moscow"),
    ("q036", "Marseille", "country", "France", "capital", "Paris"),
    ("q037", "Los Angeles", "country", "United States", "capital", "Washington, D.C."),
    ("q038", "Casablanca", "country", "Morocco", "capital", "Rabat"),
    ("q039", "Dubai", "country", "United Arab Emirates", "capital", "Abu Dhabi"),
    ("q040", "Porto", "country", "Portugal", "capital", "Lisbon"),
    ("q041", "Samsung", "country", "South Korea", "capital", "Seoul"),
    ("q042", "Nokia", "country", "Finland", "capital", "Helsinki"),
    # places -> country -> currency
    ("q043", "the Eiffel Tower", "country", "France", "currency", "euro"),
    ("q044", "Mount Fuji", "country", "Japan", "currency", "Japanese yen"),
    ("q045", "Big Ben", "country", "United Kingdom", "currency", "pound sterling"),
    ("q046", "the Statue of Liberty", "country", "United States", "currency", "United States dollar"),
    ("q047", "the Taj Mahal", "country", "India", "currency", "Indian rupee"),
    ("q048", "the Kremlin", "country", "Russia", "currency", "Russian ruble"),
    ("q049", "the Forbidden City", "country", "China", "currency", "renminbi"),
    ("q050", "Christ the Redeemer", "country", "Brazil", "currency", "Brazilian real"),
    ("q051", "Chichen Itza", "country", "Mexico", "currency", "Mexican peso"),
    ("q052", "Zurich", "country", "Switzerland", "currency", "Swiss franc"),
    ("q053", "Samsung", "country", "South Korea", "currency", "South Korean won"),
    ("q054", "Hagia Sophia", "country", "Turkey", "currency", "Turkish lira"),
    ("q055", "Stockholm", "country", "Sweden", "currency", "Swedish krona"),
    ("q056", "the Pyramids of Giza", "country", "Egypt", "currency", "Egyptian pound"),
    ("q057", "the Sydney Opera House", "country", "Australia", "currency", "Australian dollar"),
    ("q058", "Toronto", "country", "Canada", "currency", "Canadian dollar"),
    ("q059", "Kraków", "country", "Poland", "currency", "Polish złoty"),
    ("q060", "Bangkok", "country", "Thailand", "currency", "Thai baht"),
    ("q061", "the Colosseum", "country", "Italy", "currency", "euro"),
    ("q062", "Oslo", "country", "Norway", "currency", "Norwegian krone"),
    ("q063", "Copenhagen", "country", "Denmark", "currency", "Danish krone"),
    ("q064", "Dubai", "country", "United Arab Emirates", "currency", "UAE dirham"),
    ("q065", "Buenos Aires", "country", "Argentina", "currency", "Argentine peso"),
    # places -> country -> official language
    ("q066", "the Eiffel Tower", "country", "France", "official language", "French"),
    ("q067", "the Colosseum", "country", "Italy", "official language", "Italian"),
    ("q068", "the Alhambra", "country", "Spain", "official language", "Spanish"),
    ("q069", "Christ the Redeemer", "country", "Brazil", "official language", "Portuguese"),
    ("q070", "Porto", "country", "Portugal", "official language", "Portuguese"),
    ("q071", "the Kremlin", "country", "Russia", "official language", "Russian"),
    ("q072", "the Parthenon", "country", "Greece", "official language", "Greek"),
    ("q073", "Kraków", "country", "Poland", "official language", "Polish"),
    ("q074", "Hagia Sophia", "country", "Turkey", "official language", "Turkish"),
    ("q075", "the Pyramids of Giza", "country", "Egypt", "official language", "Arabic"),
    ("q076", "Mount Fuji", "country", "Japan", "official language", "Japanese"),
    ("q077", "Amsterdam", "country", "Netherlands", "official language", "Dutch"),
    ("q078", "Shanghai", "country", "China", "official language", "Standard Chinese"),
    ("q079", "Stockholm", "country", "Sweden", "official language", "Swedish"),
    ("q080", "Samsung", "country", "South Korea", "official language", "Korean"),
    # places -> country -> national anthem
    ("q081", "the Eiffel Tower", "country", "France", "anthem", "La Marseillaise"),
    ("q082", "the Statue of Liberty", "country", "United States", "anthem", "The Star-Spangled Banner"),
    ("q083", "Mount Fuji", "country", "Japan", "anthem", "Kimigayo"),
    ("q084", "the Taj Mahal", "country", "India", "anthem", "Jana Gana Mana"),
    ("q085", "Toronto", "country", "Canada", "anthem", "O Canada"),
    ("q086", "Amsterdam", "country", "Netherlands", "anthem", "Wilhelmus"),
    ("q087", "Munich", "country", "Germany", "anthem", "Deutschlandlied"),
    ("q088", "Big Ben", "country", "United Kingdom", "anthem", "God Save the King"),
    ("q089", "Shanghai", "country", "China", "anthem", "March of the Volunteers"),
    ("q090", "Barcelona", "country", "Spain", "anthem", "Marcha Real"),
    # food, music, sport -> country of origin -> capital, currency, language
    ("q091", "pizza", "country of origin", "Italy", "capital", "Rome"),
    ("q092", "sushi", "country of origin", "Japan", "capital", "Tokyo"),
    ("q093", "flamenco", "country of origin", "Spain", "capital", "Madrid"),
    ("q094", "samba", "country of origin", "Brazil", "capital", "Brasília"),
    ("q095", "judo", "country of origin", "Japan", "capital", "Tokyo"),
    ("q096", "taekwondo", "country of origin", "South Korea", "capital", "Seoul"),
    ("q097", "K-pop", "country of origin", "South Korea", "capital", "Seoul"),
    ("q098", "paella", "country of origin", "Spain", "capital", "Madrid"),
    ("q099", "bossa nova", "country of origin", "Brazil", "capital", "Brasília"),
    ("q100", "ABBA", "country of origin", "Sweden", "capital", "Stockholm"),
    ("q101", "pizza", "country of origin", "Italy", "currency", "euro"),
    ("q102", "sushi", "country of origin", "Japan", "official language", "Japanese"),
    ("q103", "flamenco", "country of origin", "Spain", "official language", "Spanish"),
    ("q104", "samba", "country of origin", "Brazil", "official language", "Portuguese"),
    ("q105", "K-pop", "country of origin", "South Korea", "currency", "South Korean won"),
    # books -> author -> country of citizenship
    ("q106", "Harry Potter and the Philosopher's Stone", "author", "J. K. Rowling", "country of citizenship",
     "United Kingdom"),
    ("q107", "The Shining", "author", "Stephen King", "country of citizenship", "United States"),
    ("q108", "One Hundred Years of Solitude", "author", "Gabriel García Márquez", "country of citizenship",
     "Colombia"),
    ("q109", "Kafka on the Shore", "author", "Haruki Murakami", "country of citizenship", "Japan"),
    ("q110", "Things Fall Apart", "author", "Chinua Achebe", "country of citizenship", "Nigeria"),
    ("q111", "The Handmaid's Tale", "author", "Margaret Atwood", "country of citizenship", "Canada"),
    ("q112", "The Old Man and the Sea", "author", "Ernest Hemingway", "country of citizenship", "United States"),
    ("q113", "Nineteen Eighty-Four", "author", "George Orwell", "country of citizenship", "United Kingdom"),
    ("q114", "Murder on the Orient Express", "author", "Agatha Christie", "country of citizenship",
     "United Kingdom"),
    ("q115", "Les Misérables", "author", "Victor Hugo", "country of citizenship", "France"),
    ("q116", "The Name of the Rose", "author", "Umberto Eco", "country of citizenship", "Italy"),
    ("q117", "The Girl with the Dragon Tattoo", "author", "Stieg Larsson", "country of citizenship", "Sweden"),
    ("q118", "Anne of Green Gables", "author", "Lucy Maud Montgomery", "country of citizenship", "Canada"),
    ("q119", "The Tin Drum", "author", "Günter Grass", "country of citizenship", "Germany"),
    ("q120", "The Little Prince", "author", "Antoine de Saint-Exupéry", "country of citizenship", "France"),
    ("q121", "The Catcher in the Rye", "author", "J. D. Salinger", "country of citizenship", "United States"),
    ("q122", "To Kill a Mockingbird", "author", "Harper Lee", "country of citizenship", "United States"),
    ("q123", "The Hobbit", "author", "J. R. R. Tolkien", "country of citizenship", "United Kingdom"),
    ("q124", "Blindness", "author", "José Saramago", "country of citizenship", "Portugal"),
    ("q125", "My Name Is Red", "author", "Orhan Pamuk", "country of citizenship", "Turkey"),
    ("q126", "Perfume: The Story of a Murderer", "author", "Patrick Süskind", "country of citizenship", "Germany"),
    ("q127", "Sophie's World", "author", "Jostein Gaarder", "country of citizenship", "Norway"),
    ("q128", "The Shadow of the Wind", "author", "Carlos Ruiz Zafón", "country of citizenship", "Spain"),
    # books -> author -> birthplace, spouse, parents
    ("q129", "Hamlet", "author", "William Shakespeare", "place of birth", "Stratford-upon-Avon"),
    ("q130", "Romeo and Juliet", "author", "William Shakespeare", "place of birth", "Stratford-upon-Avon"),
    ("q131", "Ulysses", "author", "James Joyce", "place of birth", "Dublin"),
    ("q132", "Don Quixote", "author", "Miguel de Cervantes", "place of birth", "Alcalá de Henares"),
    ("q133", "Faust", "author", "Johann Wolfgang von Goethe", "place of birth", "Frankfurt"),
    ("q134", "The Divine Comedy", "author", "Dante Alighieri", "place of birth", "Florence"),
    ("q135", "Oliver Twist", "author", "Charles Dickens", "place of birth", "Portsmouth"),
    ("q136", "War and Peace", "author", "Leo Tolstoy", "place of birth", "Yasnaya Polyana"),
    ("q137", "Dreams from My Father", "author", "Barack Obama", "spouse", "Michelle Obama"),
    ("q138", "Becoming", "author", "Michelle Obama", "spouse", "Barack Obama"),
    ("q139", "The Great Gatsby", "author", "F. Scott Fitzgerald", "spouse", "Zelda Fitzgerald"),
    ("q140", "The Bell Jar", "author", "Sylvia Plath", "spouse", "Ted Hughes"),
    ("q141", "Mrs Dalloway", "author", "Virginia Woolf", "spouse", "Leonard Woolf"),
    ("q142", "Frankenstein", "author", "Mary Shelley", "spouse", "Percy Bysshe Shelley"),
    ("q143", "Anna Karenina", "author", "Leo Tolstoy", "spouse", "Sophia Tolstaya"),
    ("q144", "On the Origin of Species", "author", "Charles Darwin", "spouse", "Emma Darwin"),
    ("q145", "Frankenstein", "author", "Mary Shelley", "mother", "Mary Wollstonecraft"),
    ("q146", "Frankenstein", "author", "Mary Shelley", "father", "William Godwin"),
    ("q147", "Dreams from My Father", "author", "Barack Obama", "mother", "Ann Dunham"),
    # films -> director -> country of citizenship
    ("q148", "Jaws", "director", "Steven Spielberg", "country of citizenship", "United States"),
    ("q149", "Spirited Away", "director", "Hayao Miyazaki", "country of citizenship", "Japan"),
    ("q150", "Seven Samurai", "director", "Akira Kurosawa", "country of citizenship", "Japan"),
    ("q151", "The Godfather", "director", "Francis Ford Coppola", "country of citizenship", "United States"),
    ("q152", "Parasite", "director", "Bong Joon-ho", "country of citizenship", "South Korea"),
    ("q153", "Amélie", "director", "Jean-Pierre Jeunet", "country of citizenship", "France"),
    ("q154", "Life Is Beautiful", "director", "Roberto Benigni", "country of citizenship", "Italy"),
    ("q155", "Pan's Labyrinth", "director", "Guillermo del Toro", "country of citizenship", "Mexico"),
    ("q156", "The Seventh Seal", "director", "Ingmar Bergman", "country of citizenship", "Sweden"),
    ("q157", "Taxi Driver", "director", "Martin Scorsese", "country of citizenship", "United States"),
    ("q158", "Star Wars", "director", "George Lucas", "country of citizenship", "United States"),
    ("q159", "The Lord of the Rings: The Fellowship of the Ring", "director", "Peter Jackson",
     "country of citizenship", "New Zealand"),
    ("q160", "La Dolce Vita", "director", "Federico Fellini", "country of citizenship", "Italy"),
    ("q161", "Run Lola Run", "director", "Tom Tykwer", "country of citizenship", "Germany"),
    ("q162", "Pulp Fiction", "director", "Quentin Tarantino", "country of citizenship", "United States"),
    ("q163", "2001: A Space Odyssey", "director", "Stanley Kubrick", "country of citizenship", "United States"),
    # songs -> performer -> country of citizenship (singers) or country of origin (bands)
    ("q164", "Thriller", "performer", "Michael Jackson", "country of citizenship", "United States"),
    ("q165", "Like a Prayer", "performer", "Madonna", "country of citizenship", "United States"),
    ("q166", "Rolling in the Deep", "performer", "Adele", "country of citizenship", "United Kingdom"),
    ("q167", "Shape of You", "performer", "Ed Sheeran", "country of citizenship", "United Kingdom"),
    ("q168", "Whenever, Wherever", "performer", "Shakira", "country of citizenship", "Colombia"),
    ("q169", "My Heart Will Go On", "performer", "Céline Dion", "country of citizenship", "Canada"),
    ("q170", "Gangnam Style", "performer", "Psy", "country of citizenship", "South Korea"),
    ("q171", "Heartbreak Hotel", "performer", "Elvis Presley", "country of citizenship", "United States"),
    ("q172", "Rocket Man", "performer", "Elton John", "country of citizenship", "United Kingdom"),
    ("q173", "La Vie en rose", "performer", "Édith Piaf", "country of citizenship", "France"),
    ("q174", "99 Luftballons", "performer", "Nena", "country of origin", "Germany"),
    ("q175", "Poker Face", "performer", "Lady Gaga", "country of citizenship", "United States"),
    ("q176", "...Baby One More Time", "performer", "Britney Spears", "country of citizenship", "United States"),
    ("q177", "Dancing Queen", "performer", "ABBA", "country of origin", "Sweden"),
    ("q178", "Bohemian Rhapsody", "performer", "Queen", "country of origin", "United Kingdom"),
    ("q179", "Take On Me", "performer", "a-ha", "country of origin", "Norway"),
    ("q180", "Smells Like Teen Spirit", "performer", "Nirvana", "country of origin", "United States"),
    ("q181", "Hey Jude", "performer", "The Beatles", "country of origin", "United Kingdom"),
    ("q182", "Wonderwall", "performer", "Oasis", "country of origin", "United Kingdom"),
    ("q183", "Du hast", "performer", "Rammstein", "country of origin", "Germany"),
    ("q184", "Highway to Hell", "performer", "AC/DC", "country of origin", "Australia"),
    ("q185", "Sweet Child o' Mine", "performer", "Guns N' Roses", "country of origin", "United States"),
    ("q186", "Paint It Black", "performer", "The Rolling Stones", "country of origin", "United Kingdom"),
    ("q187", "Stairway to Heaven", "performer", "Led Zeppelin", "country of origin", "United Kingdom"),
    ("q188", "Losing My Religion", "performer", "R.E.M.", "country of origin", "United States"),
    ("q189", "Wind of Change", "performer", "Scorpions", "country of origin", "Germany"),
    ("q190", "With or Without You", "performer", "U2", "country of origin", "Ireland"),
    ("q191", "No Woman, No Cry", "performer", "Bob Marley and the Wailers", "country of origin", "Jamaica"),
    # songs -> performer -> spouse, father, birthplace
    ("q192", "Imagine", "performer", "John Lennon", "spouse", "Yoko Ono"),
    ("q193", "Single Ladies", "performer", "Beyoncé", "spouse", "Jay-Z"),
    ("q194", "99 Problems", "performer", "Jay-Z", "spouse", "Beyoncé"),
    ("q195", "Wrecking Ball", "performer", "Miley Cyrus", "father", "Billy Ray Cyrus"),
    ("q196", "These Boots Are Made for Walkin'", "performer", "Nancy Sinatra", "father", "Frank Sinatra"),
    ("q197", "Welcome to Jamrock", "performer", "Damian Marley", "father", "Bob Marley"),
    ("q198", "Too Late for Goodbyes", "performer", "Julian Lennon", "father", "John Lennon"),
    ("q199", "Heartbreak Hotel", "performer", "Elvis Presley", "place of birth", "Tupelo"),
    ("q200", "Thriller", "performer", "Michael Jackson", "place of birth", "Gary"),
    ("q201", "Like a Prayer", "performer", "Madonna", "place of birth", "Bay City"),
    ("q202", "Whenever, Wherever", "performer", "Shakira", "place of birth", "Barranquilla"),
    # music -> composer -> country of citizenship, birthplace, father, spouse
    ("q203", "Boléro", "composer", "Maurice Ravel", "country of citizenship", "France"),
    ("q204", "Clair de lune", "composer", "Claude Debussy", "country of citizenship", "France"),
    ("q205", "Carmen", "composer", "Georges Bizet", "country of citizenship", "France"),
    ("q206", "Gymnopédies", "composer", "Erik Satie", "country of citizenship", "France"),
    ("q207", "Rhapsody in Blue", "composer", "George Gershwin", "country of citizenship", "United States"),
    ("q208", "Valse triste", "composer", "Jean Sibelius", "country of citizenship", "Finland"),
    ("q209", "In the Hall of the Mountain King", "composer", "Edvard Grieg", "country of citizenship", "Norway"),
    ("q210", "The Planets", "composer", "Gustav Holst", "country of citizenship", "United Kingdom"),
    ("q211", "La traviata", "composer", "Giuseppe Verdi", "country of citizenship", "Italy"),
    ("q212", "Madama Butterfly", "composer", "Giacomo Puccini", "country of citizenship", "Italy"),
    ("q213", "The Magic Flute", "composer", "Wolfgang Amadeus Mozart", "place of birth", "Salzburg"),
    ("q214", "The Marriage of Figaro", "composer", "Wolfgang Amadeus Mozart", "father", "Leopold Mozart"),
    ("q215", "Für Elise", "composer", "Ludwig van Beethoven", "place of birth", "Bonn"),
    ("q216", "the Brandenburg Concertos", "composer", "Johann Sebastian Bach", "place of birth", "Eisenach"),
    ("q217", "The Four Seasons", "composer", "Antonio Vivaldi", "place of birth", "Venice"),
    ("q218", "Swan Lake", "composer", "Pyotr Ilyich Tchaikovsky", "place of birth", "Votkinsk"),
    ("q219", "Ride of the Valkyries", "composer", "Richard Wagner", "place of birth", "Leipzig"),
    ("q220", "the Minute Waltz", "composer", "Frédéric Chopin", "place of birth", "Żelazowa Wola"),
    ("q221", "Kinderszenen", "composer", "Robert Schumann", "spouse", "Clara Schumann"),
    # characters, artworks -> creator -> country of citizenship, birthplace
    ("q222", "Sherlock Holmes", "creator", "Arthur Conan Doyle", "country of citizenship", "United Kingdom"),
    ("q223", "James Bond", "creator", "Ian Fleming", "country of citizenship", "United Kingdom"),
    ("q224", "Hercule Poirot", "creator", "Agatha Christie", "country of citizenship", "United Kingdom"),
    ("q225", "Tintin", "creator", "Hergé", "country of citizenship", "Belgium"),
    ("q226", "Pinocchio", "creator", "Carlo Collodi", "country of citizenship", "Italy"),
    ("q227", "Peter Rabbit", "creator", "Beatrix Potter", "country of citizenship", "United Kingdom"),
    ("q228", "the Moomins", "creator", "Tove Jansson", "country of citizenship", "Finland"),
    ("q229", "Pippi Longstocking", "creator", "Astrid Lindgren", "country of citizenship", "Sweden"),
    ("q230", "Peter Pan", "creator", "J. M. Barrie", "country of citizenship", "United Kingdom"),
    ("q231", "The Simpsons", "creator", "Matt Groening", "country of citizenship", "United States"),
    ("q232", "Mario", "creator", "Shigeru Miyamoto", "country of citizenship", "Japan"),
    ("q233", "Dragon Ball", "creator", "Akira Toriyama", "country of citizenship", "Japan"),
    ("q234", "Naruto", "creator", "Masashi Kishimoto", "country of citizenship", "Japan"),
    ("q235", "Paddington Bear", "creator", "Michael Bond", "country of citizenship", "United Kingdom"),
    ("q236", "The Starry Night", "creator", "Vincent van Gogh", "country of citizenship", "Netherlands"),
    ("q237", "Guernica", "creator", "Pablo Picasso", "country of citizenship", "Spain"),
    ("q238", "The Persistence of Memory", "creator", "Salvador Dalí", "country of citizenship", "Spain"),
    ("q239", "The Scream", "creator", "Edvard Munch", "country of citizenship", "Norway"),
    ("q240", "The Thinker", "creator", "Auguste Rodin", "country of citizenship", "France"),
    ("q241", "Campbell's Soup Cans", "creator", "Andy Warhol", "country of citizenship", "United States"),
    ("q242", "Guernica", "creator", "Pablo Picasso", "place of birth", "Málaga"),
    ("q243", "The Starry Night", "creator", "Vincent van Gogh", "place of birth", "Zundert"),
    ("q244", "The Persistence of Memory", "creator", "Salvador Dalí", "place of birth", "Figueres"),
    ("q245", "Sherlock Holmes", "creator", "Arthur Conan Doyle", "place of birth", "Edinburgh"),
    # companies, institutions -> founder -> country of citizenship, birthplace
    ("q246", "Amazon", "founder", "Jeff Bezos", "country of citizenship", "United States"),
    ("q247", "IKEA", "founder", "Ingvar Kamprad", "country of citizenship", "Sweden"),
    ("q248", "Ferrari", "founder", "Enzo Ferrari", "country of citizenship", "Italy"),
    ("q249", "LEGO", "founder", "Ole Kirk Christiansen", "country of citizenship", "Denmark"),
    ("q250", "Nintendo", "founder", "Fusajiro Yamauchi", "country of citizenship", "Japan"),
    ("q251", "Ford Motor Company", "founder", "Henry Ford", "country of citizenship", "United States"),
    ("q252", "Huawei", "founder", "Ren Zhengfei", "country of citizenship", "China"),
    ("q253", "Samsung", "founder", "Lee Byung-chul", "country of citizenship", "South Korea"),
    ("q254", "Adidas", "founder", "Adolf Dassler", "country of citizenship", "Germany"),
    ("q255", "Puma", "founder", "Rudolf Dassler", "country of citizenship", "Germany"),
    ("q256", "Chanel", "founder", "Coco Chanel", "country of citizenship", "France"),
    ("q257", "KFC", "founder", "Colonel Sanders", "country of citizenship", "United States"),
    ("q258", "Walmart", "founder", "Sam Walton", "country of citizenship", "United States"),
    ("q259", "Lamborghini", "founder", "Ferruccio Lamborghini", "country of citizenship", "Italy"),
    ("q260", "Heineken", "founder", "Gerard Adriaan Heineken", "country of citizenship", "Netherlands"),
    ("q261", "Hyundai", "founder", "Chung Ju-yung", "country of citizenship", "South Korea"),
    ("q262", "Reliance Industries", "founder", "Dhirubhai Ambani", "country of citizenship", "India"),
    ("q263", "Boeing", "founder", "William Boeing", "country of citizenship", "United States"),
    ("q264", "Carlsberg", "founder", "J. C. Jacobsen", "country of citizenship", "Denmark"),
    ("q265", "the Scout movement", "founder", "Robert Baden-Powell", "country of citizenship", "United Kingdom"),
    ("q266", "the Nobel Prize", "founder", "Alfred Nobel", "country of citizenship", "Sweden"),
    ("q267", "Amazon", "founder", "Jeff Bezos", "place of birth", "Albuquerque"),
    ("q268", "Ferrari", "founder", "Enzo Ferrari", "place of birth", "Modena"),
    # software, games -> developer -> country, headquarters
    ("q269", "Minecraft", "developer", "Mojang Studios", "country", "Sweden"),
    ("q270", "Super Mario Bros.", "developer", "Nintendo", "country", "Japan"),
    ("q271", "The Witcher 3: Wild Hunt", "developer", "CD Projekt Red", "country", "Poland"),
    ("q272", "Angry Birds", "developer", "Rovio Entertainment", "country", "Finland"),
    ("q273", "Pac-Man", "developer", "Namco", "country", "Japan"),
    ("q274", "Half-Life", "developer", "Valve", "country", "United States"),
    ("q275", "Street Fighter", "developer", "Capcom", "country", "Japan"),
    ("q276", "Windows", "developer", "Microsoft", "country", "United States"),
    ("q277", "Photoshop", "developer", "Adobe", "country", "United States"),
    ("q278", "Clash of Clans", "developer", "Supercell", "country", "Finland"),
    ("q279", "Windows", "developer", "Microsoft", "headquarters location", "Redmond"),
    ("q280", "macOS", "developer", "Apple", "headquarters location", "Cupertino"),
    ("q281", "Minecraft", "developer", "Mojang Studios", "headquarters location", "Stockholm"),
    ("q282", "Super Mario Bros.", "developer", "Nintendo", "headquarters location", "Kyoto"),
    ("q283", "The Witcher 3: Wild Hunt", "developer", "CD Projekt Red", "headquarters location", "Warsaw"),
    ("q284", "Angry Birds", "developer", "Rovio Entertainment", "headquarters location", "Espoo"),
    ("q285", "Half-Life", "developer", "Valve", "headquarters location", "Bellevue"),
    ("q286", "Photoshop", "developer", "Adobe", "headquarters location", "San Jose"),
    ("q287", "ChatGPT", "developer", "OpenAI", "headquarters location", "San Francisco"),
    ("q288", "Clash of Clans", "developer", "Supercell", "headquarters location", "Helsinki"),
    # organisations, companies -> headquarters location -> country
    ("q289", "the United Nations", "headquarters location", "New York City", "country", "United States"),
    ("q290", "NATO", "headquarters location", "Brussels", "country", "Belgium"),
    ("q291", "the International Olympic Committee", "headquarters location", "Lausanne", "country",
     "Switzerland"),
    ("q292", "the European Central Bank", "headquarters location", "Frankfurt", "country", "Germany"),
    ("q293", "UNESCO", "headquarters location", "Paris", "country", "France"),
    ("q294", "the World Health Organization", "headquarters location", "Geneva", "country", "Switzerland"),
    ("q295", "Interpol", "headquarters location", "Lyon", "country", "France"),
    ("q296", "OPEC", "headquarters location", "Vienna", "country", "Austria"),
    ("q297", "FIFA", "headquarters location", "Zurich", "country", "Switzerland"),
    ("q298", "Volkswagen", "headquarters location", "Wolfsburg", "country", "Germany"),
    ("q299", "BMW", "headquarters location", "Munich", "country", "Germany"),
    ("q300", "Nokia", "headquarters location", "Espoo", "country", "Finland"),
    ("q301", "Nestlé", "headquarters location", "Vevey", "country", "Switzerland"),
    # services, studios -> owner -> headquarters
    ("q302", "YouTube", "owned by", "Google", "headquarters location", "Mountain View"),
    ("q303", "Instagram", "owned by", "Meta Platforms", "headquarters location", "Menlo Park"),
    ("q304", "WhatsApp", "owned by", "Meta Platforms", "headquarters location", "Menlo Park"),
    ("q305", "LinkedIn", "owned by", "Microsoft", "headquarters location", "Redmond"),
    ("q306", "GitHub", "owned by", "Microsoft", "headquarters location", "Redmond"),
    ("q307", "Pixar", "owned by", "The Walt Disney Company", "headquarters location", "Burbank"),
    ("q308", "Marvel Studios", "owned by", "The Walt Disney Company", "headquarters location", "Burbank"),
    ("q309", "Lucasfilm", "owned by", "The Walt Disney Company", "headquarters location", "Burbank"),
    # people -> country of citizenship -> capital, currency, language
    ("q310", "Pablo Picasso", "country of citizenship", "Spain", "capital", "Madrid"),
    ("q311", "Frida Kahlo", "country of citizenship", "Mexico", "capital", "Mexico City"),
    ("q312", "Vincent van Gogh", "country of citizenship", "Netherlands", "capital", "Amsterdam"),
    ("q313", "Cristiano Ronaldo", "country of citizenship", "Portugal", "capital", "Lisbon"),
    ("q314", "Pelé", "country of citizenship", "Brazil", "capital", "Brasília"),
    ("q315", "Diego Maradona", "country of citizenship", "Argentina", "capital", "Buenos Aires"),
    ("q316", "Usain Bolt", "country of citizenship", "Jamaica", "capital", "Kingston"),
    ("q317", "Angela Merkel", "country of citizenship", "Germany", "capital", "Berlin"),
    ("q318", "Vladimir Putin", "country of citizenship", "Russia", "capital", "Moscow"),
    ("q319", "Fidel Castro", "country of citizenship", "Cuba", "capital", "Havana"),
    ("q320", "Björk", "country of citizenship", "Iceland", "capital", "Reykjavík"),
    ("q321", "Shakira", "country of citizenship", "Colombia", "capital", "Bogotá"),
    ("q322", "Ho Chi Minh", "country of citizenship", "Vietnam", "capital", "Hanoi"),
    ("q323", "Greta Thunberg", "country of citizenship", "Sweden", "capital", "Stockholm"),
    ("q324", "Justin Trudeau", "country of citizenship", "Canada", "capital", "Ottawa"),
    ("q325", "Kofi Annan", "country of citizenship", "Ghana", "capital", "Accra"),
    ("q326", "Pablo Picasso", "country of citizenship", "Spain", "official language", "Spanish"),
    ("q327", "Cristiano Ronaldo", "country of citizenship", "Portugal", "official language", "Portuguese"),
    ("q328", "Vladimir Putin", "country of citizenship", "Russia", "official language", "Russian"),
    ("q329", "Cristiano Ronaldo", "country of citizenship", "Portugal", "currency", "euro"),
    ("q330", "Usain Bolt", "country of citizenship", "Jamaica", "currency", "Jamaican dollar"),
    ("q331", "Vladimir Putin", "country of citizenship", "Russia", "currency", "Russian ruble"),
    ("q332", "Nelson Mandela", "country of citizenship", "South Africa", "currency", "South African rand"),
    # the British royal family -> parent -> spouse, parent
    ("q333", "Charles III", "mother", "Elizabeth II", "spouse", "Prince Philip"),
    ("q334", "Prince William", "father", "Charles III", "mother", "Elizabeth II"),
    ("q335", "Prince George of Wales", "father", "Prince William", "mother", "Diana, Princess of Wales"),
)

FIELDS = ("id", "e1", "e1_aliases", "r1", "e2", "e2_aliases", "r2", "e3", "e3_aliases")
LABELS = ("id", "e1", "r1", "e2", "r2", "e3")
ALIAS_FIELDS = ("e1_aliases", "e2_aliases", "e3_aliases")
# Derived by code: the templates, the two-hop prompt and the paper's single-hop and shortcut prompts,
# and the text whose last token is t1 (e1's last token in the two-hop prompt).
DERIVED = ("r1_template", "r2_template", "prompt", "first_hop_prompt", "second_hop_prompt",
           "entity_shortcut_prompt", "t1_text")
COLUMNS = (*FIELDS, *DERIVED)
KEYS = ("relations", "queries")

QUERIES: tuple[dict[str, Any], ...] = tuple(
    {"id": qid, "e1": e1, "e1_aliases": list(ALIASES.get(e1, ())), "r1": r1,
     "e2": e2, "e2_aliases": list(ALIASES.get(e2, ())), "r2": r2, "e3": e3, "e3_aliases": list(ALIASES.get(e3, ()))}
    for qid, e1, r1, e2, r2, e3 in ROWS)


class WorldError(ValueError):
    """The query file is missing or malformed, or a query breaks a rule; the message is one line."""


def fill(template: str, entity: str) -> str:
    """A relation phrase about ``entity``: "the capital of {}" -> "the capital of Japan"."""
    return template.replace("{}", entity, 1)


def two_hop_prompt(r1_template: str, r2_template: str, e1: str) -> str:
    """The paper's nesting: the r1 phrase inside the r2 template, then " is"."""
    return fill(r2_template, fill(r1_template, e1)) + " is"


def derived_fields(e1: str, e2: str, r1_template: str, r2_template: str) -> dict[str, str]:
    return {"r1_template": r1_template, "r2_template": r2_template,
            "prompt": two_hop_prompt(r1_template, r2_template, e1),
            "first_hop_prompt": fill(r1_template, e1) + " is", "second_hop_prompt": fill(r2_template, e2) + " is",
            "entity_shortcut_prompt": fill(r2_template, e1) + " is", "t1_text": fill(r1_template, e1)}


def _check_relations(relations: Any, where: str) -> dict[str, str]:
    if not isinstance(relations, dict) or not relations:
        raise WorldError(f"{where}: relations must be a mapping of relation name -> template")
    for name, template in relations.items():
        if not isinstance(name, str) or not isinstance(template, str) or template.count("{}") != 1 \
                or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
            raise WorldError(f"{where}: relation {name!r} needs a template with exactly one '{{}}', "
                             f"got {template!r}")
    return dict(relations)


def _check_query(query: Any, index: int, relations: Mapping[str, str], where: str) -> dict[str, Any]:
    if not isinstance(query, dict):
        raise WorldError(f"{where}: query number {index + 1} is not a mapping")
    name = f"query {query.get('id', f'number {index + 1}')!s}"
    missing = [f for f in FIELDS if f not in query]
    if missing:
        raise WorldError(f"{where}: {name} lacks the field {missing[0]!r}")
    extra = sorted(set(query) - set(FIELDS))
    if extra:
        raise WorldError(f"{where}: {name} has unknown field {extra[0]!r}; fields are {', '.join(FIELDS)}")
    bad = [f for f in LABELS if not isinstance(query[f], str) or not query[f].strip()]
    if bad:
        raise WorldError(f"{where}: {name}: {bad[0]} must be a non-empty string, got {query[bad[0]]!r}")
    bad = [f for f in ALIAS_FIELDS if not isinstance(query[f], list) or not all(isinstance(a, str) for a in query[f])]
    if bad:
        raise WorldError(f"{where}: {name}: {bad[0]} must be a list of strings, got {query[bad[0]]!r}")
    for relation in (query["r1"], query["r2"]):
        if relation not in relations:
            raise WorldError(f"{where}: {name}: relation {relation!r} has no template")
    labels = [query["e1"].casefold(), query["e2"].casefold(), query["e3"].casefold()]
    if len(set(labels)) < 3:
        raise WorldError(f"{where}: {name}: e1, e2 and e3 must be three different entities, got "
                         f"{query['e1']!r}, {query['e2']!r}, {query['e3']!r}")
    row = {f: list(query[f]) if f in ALIAS_FIELDS else query[f] for f in FIELDS}
    row.update(derived_fields(query["e1"], query["e2"], relations[query["r1"]], relations[query["r2"]]))
    try:
        check_answer_not_in_prompt(row["prompt"], answer_aliases(query["e3"], query["e3_aliases"]),
                                   f"{where}: {name}")
    except AnswerInPromptError as error:
        raise WorldError(str(error)) from None
    return row


def world_frame(relations: Any, queries: Any, where: str) -> pd.DataFrame:
    """The checked queries as a frame (one row per query, :data:`COLUMNS`); its ``attrs["relations"]``
    is the relation table the templates came from."""
    relations = _check_relations(relations, where)
    if not isinstance(queries, (list, tuple)) or not queries:
        raise WorldError(f"{where}: queries must be a non-empty list")
    rows = [_check_query(q, i, relations, where) for i, q in enumerate(queries)]
    ids = [r["id"] for r in rows]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise WorldError(f"{where}: duplicate query id(s) {repeated[:5]}")
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)  # text stays object, as in the YAML reader
    frame.attrs["relations"] = relations
    return frame


@lru_cache(maxsize=1)
def _canonical() -> pd.DataFrame:
    return world_frame(RELATIONS, list(QUERIES), "the canonical query set (world.py)")


def canonical_world() -> pd.DataFrame:
    """The canonical set without the YAML (a fresh copy: callers may change it)."""
    frame = _canonical()
    copy = frame.copy()
    for column in ALIAS_FIELDS:
        copy[column] = [list(v) for v in frame[column]]
    copy.attrs["relations"] = dict(frame.attrs["relations"])
    return copy


def world_dict(relations: Mapping[str, str] = RELATIONS, queries: Sequence[Mapping[str, Any]] = QUERIES) -> dict:
    return {"relations": dict(relations), "queries": [{f: q[f] for f in FIELDS} for q in queries]}


def write_world(path: Path, relations: Mapping[str, str] = RELATIONS,
                queries: Sequence[Mapping[str, Any]] = QUERIES) -> Path:
    """Check the queries, then write them (with the relation templates) in one rename."""
    world_frame(dict(relations), list(queries), "the query set to write")
    data = world_dict(relations, queries)
    text = ("# Study 3's curated two-hop queries (modules/studies/hopping/world.py); versioned by data.dvc.\n"
            "# Each query: e1 -r1-> e2 -r2-> e3; prompts are derived from the relation templates.\n"
            + yaml.safe_dump({"relations": data["relations"]}, sort_keys=False, allow_unicode=True)
            + yaml.safe_dump({"queries": data["queries"]}, sort_keys=False, allow_unicode=True,
                             default_flow_style=None, width=120))
    atomic_write_text(Path(path), text)
    return Path(path)


def _read_yaml(path: Path) -> dict:
    path = Path(path)
    return read_yaml_mapping(path, KEYS, WorldError,
                             f"hopping query set at {path}; run `dvc pull data.dvc` (or `make setup`)")


def load_world(path: Path) -> pd.DataFrame:
    """The query file as a checked frame (see :func:`world_frame`); one-line :class:`WorldError`s."""
    raw = _read_yaml(path)
    return world_frame(raw["relations"], raw["queries"], str(path))


def read_world_unchecked(path: Path) -> pd.DataFrame:
    """The query file as a frame without the query rules (a missing field reads as None, a prompt
    whose template is missing as None), so the GX suite can report every violation at once. Only an
    unreadable file fails here."""
    raw = _read_yaml(path)
    relations = raw["relations"] if isinstance(raw["relations"], dict) else {}
    queries = raw["queries"] if isinstance(raw["queries"], list) else []
    rows = []
    for query in queries:
        query = query if isinstance(query, dict) else {}
        row = {f: query.get(f) for f in FIELDS}
        templates = [relations.get(r) if isinstance(r, str) else None for r in (row["r1"], row["r2"])]
        if all(isinstance(t, str) for t in templates) and all(isinstance(row[e], str) for e in ("e1", "e2")):
            row.update(derived_fields(row["e1"], row["e2"], *templates))
        else:
            row.update(dict.fromkeys(DERIVED), r1_template=templates[0], r2_template=templates[1])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    frame.attrs["relations"] = {k: v for k, v in relations.items() if isinstance(k, str) and isinstance(v, str)}
    return frame
