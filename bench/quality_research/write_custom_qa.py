import json, re
doc = open("/work/main/examples/data/quality/python-basic-customization.txt").read()
norm = lambda s: re.sub(r"\s+", " ", s).strip()
D = norm(doc)
# (question, answer, exact-substring-of-doc used to check / locate the answer); answers are the doc's words
qa = [
("What kind of method is __new__() in Python, and what does it take as its first argument?",
 "\"__new__()\" is a static method (special-cased so you need not declare it as such) that takes the class of which an instance was requested as its first argument."),
("What should __new__() return?",
 "The return value of \"__new__()\" should be the new object instance (usually an instance of *cls*)."),
("What happens if __new__() does not return an instance of cls?",
 "If \"__new__()\" does not return an instance of *cls*, then the new instance’s \"__init__()\" method will not be invoked."),
("What is __new__() mainly intended for?",
 "\"__new__()\" is intended mainly to allow subclasses of immutable types (like int, str, or tuple) to customize instance creation."),
("When is __init__() called?",
 "Called after the instance has been created (by \"__new__()\"), but before it is returned to the caller."),
("What must a derived class's __init__() do if its base class has an __init__() method?",
 "The derived class’s \"__init__()\" method, if any, must explicitly call it to ensure proper initialization of the base class part of the instance."),
("What happens if __init__() returns a value other than None?",
 "No non-\"None\" value may be returned by \"__init__()\"; doing so will cause a \"TypeError\" to be raised at runtime."),
("What else is the __del__() method called?",
 "This is also called a finalizer or (improperly) a destructor."),
("What is object resurrection in Python?",
 "It is possible (though not recommended!) for the \"__del__()\" method to postpone destruction of the instance by creating a new reference to it. This is called object *resurrection*."),
("Is __del__() called a second time when a resurrected object is about to be destroyed?",
 "It is implementation-dependent whether \"__del__()\" is called a second time when a resurrected object is about to be destroyed; the current *CPython* implementation only calls it once."),
("Is __del__() guaranteed to be called for objects that still exist when the interpreter exits?",
 "No. It is not guaranteed that \"__del__()\" methods are called for objects that still exist when the interpreter exits."),
("Does \"del x\" call x.__del__() directly?",
 "No. \"del x\" doesn’t directly call \"x.__del__()\" — the former decrements the reference count for \"x\" by one, and the latter is only called when \"x\"’s reference count reaches zero."),
("In CPython, what happens when a reference cycle keeps an object's reference count from reaching zero?",
 "In this case, the cycle will be later detected and deleted by the *cyclic garbage collector*."),
("What is a common cause of reference cycles?",
 "A common cause of reference cycles is when an exception has been caught in a local variable."),
("What happens to exceptions raised while a __del__() method runs?",
 "Exceptions that occur during their execution are ignored, and a warning is printed to \"sys.stderr\" instead."),
("Why can a __del__() method that takes a lock deadlock?",
 "It may deadlock as the resource may already be taken by the code that gets interrupted to execute \"__del__()\"."),
("During interpreter shutdown, which module globals does Python guarantee to delete first?",
 "Python guarantees that globals whose name begins with a single underscore are deleted from their module before other globals are deleted."),
("What does __repr__() compute?",
 "Called by the \"repr()\" built-in function to compute the “official” string representation of an object."),
("If possible, what should the string returned by __repr__() look like?",
 "If at all possible, this should look like a valid Python expression that could be used to recreate an object with the same value (given an appropriate environment)."),
("What is used for the informal string representation when a class defines __repr__() but not __str__()?",
 "If a class defines \"__repr__()\" but not \"__str__()\", then \"__repr__()\" is also used when an “informal” string representation of instances of that class is required."),
("Which functions call __str__()?",
 "Called by \"str(object)\" and the built-in functions \"format()\" and \"print()\" to compute the “informal” or nicely printable string representation of an object."),
("How does __str__() differ from __repr__() in what it must return?",
 "There is no expectation that \"__str__()\" return a valid Python expression: a more convenient or concise representation can be used."),
("What does the default __str__() of the built-in type object do?",
 "The default implementation defined by the built-in type \"object\" calls \"object.__repr__()\"."),
("What is __bytes__() for and what should it return?",
 "Called by bytes to compute a byte-string representation of an object. This should return a \"bytes\" object."),
("What calls __format__()?",
 "Called by the \"format()\" built-in function, and by extension, evaluation of formatted string literals and the \"str.format()\" method, to produce a “formatted” string representation of an object."),
("Who decides how the format_spec argument of __format__() is interpreted?",
 "The interpretation of the *format_spec* argument is up to the type implementing \"__format__()\", however most classes will either delegate formatting to one of the built-in types, or use a similar formatting option syntax."),
("What changed in Python 3.4 about the __format__ method of object?",
 "The __format__ method of \"object\" itself raises a \"TypeError\" if passed any non-empty string."),
("What changed in Python 3.7 about object.__format__(x, '')?",
 "\"object.__format__(x, '')\" is now equivalent to \"str(x)\" rather than \"format(str(x), '')\"."),
("What may a rich comparison method return if it does not implement the operation?",
 "A rich comparison method may return the singleton \"NotImplemented\" if it does not implement the operation for a given pair of arguments."),
("What does Python do when a comparison that returns a non-boolean value is used in a Boolean context?",
 "Python will call \"bool()\" on the value to determine if the result is true or false."),
("How does object implement __eq__() by default?",
 "By default, \"object\" implements \"__eq__()\" by using \"is\", returning \"NotImplemented\" in the case of a false comparison."),
("What does __ne__() do by default?",
 "For \"__ne__()\", by default it delegates to \"__eq__()\" and inverts the result unless it is \"NotImplemented\"."),
("Which rich comparison methods are each other's reflection?",
 "\"__lt__()\" and \"__gt__()\" are each other’s reflection, \"__le__()\" and \"__ge__()\" are each other’s reflection, and \"__eq__()\" and \"__ne__()\" are their own reflection."),
("When the operands of a comparison have different types, whose method has priority?",
 "If the operands are of different types, and right operand’s type is a direct or indirect subclass of the left operand’s type, the reflected method of the right operand has priority, otherwise the left operand’s method has priority."),
("What calls __hash__()?",
 "Called by built-in function \"hash()\" and for operations on members of hashed collections including \"set\", \"frozenset\", and \"dict\"."),
("What is the only required property of __hash__()?",
 "The only required property is that objects which compare equal have the same hash value."),
("How is it advised to compute the hash of an object from its components?",
 "It is advised to mix together the hash values of the components of the object that also play a part in comparison of objects by packing them into a tuple and hashing the tuple."),
("What does hash() do to the value returned by a custom __hash__() method?",
 "\"hash()\" truncates the value returned from an object’s custom \"__hash__()\" method to the size of a \"Py_ssize_t\"."),
("Should a class that does not define __eq__() define __hash__()?",
 "No. If a class does not define an \"__eq__()\" method it should not define a \"__hash__()\" operation either."),
("Why should a class of mutable objects that implements __eq__() not implement __hash__()?",
 "Since the implementation of *hashable* collections requires that a key’s hash value is immutable (if the object’s hash value changes, it will be in the wrong hash bucket)."),
("What happens to __hash__() in a class that overrides __eq__() without defining __hash__()?",
 "A class that overrides \"__eq__()\" and does not define \"__hash__()\" will have its \"__hash__()\" implicitly set to \"None\"."),
("How can a class that overrides __eq__() keep the __hash__() of its parent class?",
 "The interpreter must be told this explicitly by setting \"__hash__ = <ParentClass>.__hash__\"."),
("How can a class that does not override __eq__() suppress hash support?",
 "It should include \"__hash__ = None\" in the class definition."),
("What happens by default to the __hash__() values of str and bytes objects?",
 "By default, the \"__hash__()\" values of str and bytes objects are “salted” with an unpredictable random value."),
("Why are the hash values of str and bytes salted?",
 "This is intended to provide protection against a denial-of-service caused by carefully chosen inputs that exploit the worst case performance of a dict insertion, O(n^2) complexity."),
("What should __bool__() return, and what is it called for?",
 "Called to implement truth value testing and the built-in operation \"bool()\"; should return \"False\" or \"True\"."),
("What happens in truth value testing when __bool__() is not defined?",
 "When this method is not defined, \"__len__()\" is called, if it is defined, and the object is considered true if its result is nonzero."),
("When are all instances of a class considered true?",
 "If a class defines neither \"__len__()\" nor \"__bool__()\", all its instances are considered true."),
]
assert len(qa) == 48, len(qa)
def core(a):
    a = re.sub(r"^(Yes|No)\. ", "", a)
    return a
pos = []
for q, a in qa:
    c = norm(core(a)).rstrip(".")
    i = D.find(c)
    if i < 0: i = D.lower().find(c.lower())
    if i < 0: i = D.lower().find(c.lower()[1:])  # capitalised first letter
    assert i >= 0, a
    pos.append(i)
assert pos == sorted(pos), "not in document order"
dev = [x for k, x in enumerate(qa) if k % 2 == 0]
held = [x for k, x in enumerate(qa) if k % 2 == 1]
for name, s in [("dev", dev), ("heldout", held)]:
    with open(f"/work/main/examples/data/quality/python-basic-customization.{name}.qa.jsonl", "w") as f:
        for q, a in s: f.write(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n")
print([round(p/len(D),3) for p in pos])
